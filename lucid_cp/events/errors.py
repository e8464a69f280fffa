"""The event stream's errors: subclasses of the generic ones, each mapped to its reason by
``STATUS_ROWS``, which the events module adds to the one status table.

* Invalid requests (field rules, and the core's own checks: data filter paths, an ack beyond
  the head) are the seed's LUCID_ERR_1302 with field violations: 400 / INVALID_ARGUMENT.
* A cursor behind retention (``CursorBehindRetention``) is LUCID_ERR_1302 too, with details
  ``lost`` (events deleted after the cursor) and ``resumeCursor`` (ack it to go on). The generic
  classes offer no OUT_OF_RANGE or FAILED_PRECONDITION row, so it is an InvalidArgument: gRPC
  INVALID_ARGUMENT, HTTP 400 (the gateway would answer 400 for those two codes as well).
* A re-published eventId with other content is 409 / ALREADY_EXISTS (LUCID_ERR_1908).
* A subscription that does not exist, or belongs to another service, is 404 (LUCID_ERR_1907):
  its existence is not revealed.
"""

from __future__ import annotations

from lucid_cp.api.lucid.common.v1 import errors_pb2
from lucid_cp.errors import AlreadyExists, InvalidArgument, NotFound

R = errors_pb2.ErrorReason


class InvalidEventRequest(InvalidArgument):
    """A request breaks a field rule or a check of the core (LUCID_ERR_1302)."""


class CursorBehindRetention(InvalidEventRequest):
    """The events after the cursor were deleted by retention (LUCID_ERR_1302, 400)."""

    def __init__(self, cursor: int, oldest: int) -> None:
        lost = oldest - cursor - 1
        super().__init__(
            f"{lost} event(s) after cursor {cursor} were deleted by retention (the oldest "
            f"retained is {oldest}); ack {oldest - 1} to continue from there",
            details={"lost": lost, "resumeCursor": oldest - 1, "cursor": cursor},
        )
        self.lost = lost
        self.resume_cursor = oldest - 1

    def since(self, cursor: int) -> CursorBehindRetention:
        """The same gap told from ``cursor`` (an earlier position of the same reader)."""
        return CursorBehindRetention(cursor, self.resume_cursor + 1)


class EventIdConflict(AlreadyExists):
    """The eventId was published before with other content (LUCID_ERR_1908)."""


class SubscriptionNotFound(NotFound):
    """No such subscription, or not the caller's (LUCID_ERR_1907)."""


STATUS_ROWS: dict[type[Exception], int] = {
    InvalidEventRequest: R.EVENT_SUBSCRIPTION_FAILED,
}
