"""The message queue's errors: subclasses of the generic ones, mapped to their reasons by
``STATUS_ROWS``, which the messaging module adds to the one status table.

Invalid requests are the seed's LUCID_ERR_1301 (MESSAGE_DELIVERY_FAILED), for declared field
rules and write-time checks alike. A message that is not found, or that the caller may not see,
is the generic 404 (1907): existence is never revealed. A message id re-sent with other content
is the generic 409 ALREADY_EXISTS (1908); an ack or nack of an attempt that is no longer the
message's is 409 ABORTED (1905, the generic compare-and-swap conflict)."""

from __future__ import annotations

from lucid_cp.api.lucid.common.v1 import errors_pb2
from lucid_cp.errors import AlreadyExists, Conflict, InvalidArgument, NotFound

R = errors_pb2.ErrorReason


class InvalidMessageRequest(InvalidArgument):
    """A request breaks a field rule or a write-time check (LUCID_ERR_1301)."""


class MessageNotFound(NotFound):
    """No such message, or not one the caller sent or received (LUCID_ERR_1907)."""


class MessageIdConflict(AlreadyExists):
    """The message id is taken by a message with other content; it is untouched (1908)."""


class AttemptNotCurrent(Conflict):
    """An ack or nack of an attempt that is not the message's current one (409, 1905)."""


STATUS_ROWS: dict[type[Exception], int] = {
    InvalidMessageRequest: R.MESSAGE_DELIVERY_FAILED,
    MessageNotFound: R.NOT_FOUND,
    MessageIdConflict: R.ALREADY_EXISTS,
    AttemptNotCurrent: R.REVISION_CONFLICT,
}
