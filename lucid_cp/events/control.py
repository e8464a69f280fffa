"""The event stream core: publish, subscriptions (create, read, list, delete), pull, ack and the
stream. Pure asyncio over the log, the tail, the subscription index and the Clock; it never
imports grpc.

Who may do what (ServiceAuth): a service publishes as itself (``source`` = its own service;
"lucid-cp" is reserved for the control plane), subscribes as itself (``subscriberId`` = its
own service; admin: anyone), and reads, pulls, acks, streams and deletes only its own
subscriptions: another service's is 404 (its existence is not revealed). An admin does all.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator

from google.protobuf import timestamp_pb2

from lucid_cp.api.lucid.messaging.v1 import delivery_pb2
from lucid_cp.api.lucid.messaging.v1 import events_pb2 as pb
from lucid_cp.auth.tokens import Principal
from lucid_cp.clock import Clock
from lucid_cp.errors import FieldViolation, PermissionDenied
from lucid_cp.events.errors import CursorBehindRetention, InvalidEventRequest
from lucid_cp.events.feed import SOURCE
from lucid_cp.events.log import EventLog
from lucid_cp.events.matching import Matcher, path_violations
from lucid_cp.events.reader import EventReader
from lucid_cp.events.subscriptions import SubscriptionIndex, SubscriptionWriter, not_found

log = logging.getLogger("lucid_cp.events.control")

READ_YOUR_WRITES_TIMEOUT = 2.0
STREAM_PAGE = 100


class EventControl:
    def __init__(
        self,
        log: EventLog,
        reader: EventReader,
        index: SubscriptionIndex,
        writer: SubscriptionWriter,
        clock: Clock,
    ) -> None:
        self._log = log
        self._reader = reader
        self._index = index
        self._writer = writer
        self._clock = clock

    # -- publishing --------------------------------------------------------------------------

    async def publish(self, principal: Principal, event: pb.ServiceEvent) -> pb.EventResponse:
        if event.source == SOURCE:
            raise PermissionDenied(
                f"source {SOURCE!r} is reserved for the control plane's own events",
                details={"source": event.source},
            )
        principal.require_acts_as(event.source)
        response = await self._log.append(event)
        # Read-your-writes: a stream or long poll on this replica sees it once answered.
        await self._reader.tail.wait_for(response.revision, READ_YOUR_WRITES_TIMEOUT)
        return response

    # -- subscriptions -----------------------------------------------------------------------

    async def subscribe(
        self, principal: Principal, subscription: pb.EventSubscription
    ) -> pb.EventSubscriptionResponse:
        violations = path_violations(subscription.filters, "subscription.filters.")
        if subscription.delivery_mode == delivery_pb2.DELIVERY_MODE_UNSPECIFIED:
            # Only over gRPC, set explicitly to 0 (absent, the default applies: push).
            violations.append(FieldViolation("subscription.deliveryMode", "must be push or pull"))
        if violations:
            raise InvalidEventRequest(
                "; ".join(f"{v.field}: {v.description}" for v in violations), violations
            )
        subscriber = subscription.subscriber_id or principal.subject
        if not principal.is_admin and subscriber != principal.subject:
            raise PermissionDenied(
                f"token subject {principal.subject!r} may not subscribe for {subscriber!r}",
                details={"subject": principal.subject, "subscriberId": subscriber},
            )
        subscription.subscriber_id = subscriber
        head = await self._log.head()
        cursor = (await self._log.oldest()) - 1 if subscription.from_beginning else head
        record = pb.EventSubscriptionResponse(
            subscription_id=str(uuid.uuid4()),
            subscription=subscription,
            created_at=self._now(),
            cursor=cursor,
        )
        revision = await self._writer.create(record)
        await self._read_your_write(revision)
        record.revision = revision
        record.head = head
        return record

    def get(self, principal: Principal, subscription_id: str) -> pb.EventSubscriptionResponse:
        found = self._index.get(subscription_id)
        if found is None or not _visible(principal, found):
            raise not_found(subscription_id)
        return self._read(found)

    def list(
        self, principal: Principal, request: pb.ListSubscriptionsRequest
    ) -> pb.SubscriptionList:
        subscriber = request.subscriber_id if principal.is_admin else principal.subject
        matching = [
            r
            for r in self._index.all()
            if not subscriber or r.subscription.subscriber_id == subscriber
        ]
        page = matching[request.offset : request.offset + request.limit]
        return pb.SubscriptionList(subscriptions=[self._read(r) for r in page], total=len(matching))

    async def delete(self, principal: Principal, subscription_id: str) -> int:
        record = await self._writer.read(subscription_id)
        if not _visible(principal, record):
            raise not_found(subscription_id)
        revision = await self._writer.delete(subscription_id)
        await self._read_your_write(revision)
        return revision

    # -- consuming ---------------------------------------------------------------------------

    async def pull(self, principal: Principal, request: pb.PullEventsRequest) -> pb.EventBatch:
        record = await self._own(principal, request.subscription_id)
        sub = record.subscription
        limit = request.max_events if request.HasField("max_events") else sub.batch_size
        matcher = Matcher.of(sub)
        batch = await self._reader.matching(record.cursor, limit, matcher, fresh=True)
        if batch.events or batch.more or request.wait_ms <= 0:
            return _batch(batch.events, batch.cursor, batch.more)
        try:
            async with self._clock.timeout(request.wait_ms / 1000):
                while not batch.events and not batch.more:
                    await self._reader.wait_beyond(batch.cursor)
                    batch = await self._reader.matching(batch.cursor, limit, matcher, fresh=True)
        except TimeoutError:
            pass
        except CursorBehindRetention as gap:  # told from the stored cursor, as the first read
            raise gap.since(record.cursor) from None
        return _batch(batch.events, batch.cursor, batch.more)

    async def ack(
        self, principal: Principal, subscription_id: str, cursor: int
    ) -> pb.AckEventsResponse:
        await self._own(principal, subscription_id)
        head = await self._log.head()
        if cursor > head:
            raise InvalidEventRequest(
                f"cursor {cursor} is beyond the head of the stream ({head})",
                [FieldViolation("cursor", f"must be at most the head of the stream ({head})")],
                details={"head": head},
            )
        advanced = await self._writer.advance(subscription_id, cursor)
        if advanced.changed:
            await self._read_your_write(advanced.revision)
        return pb.AckEventsResponse(cursor=advanced.record.cursor, revision=advanced.revision)

    async def stream(
        self, principal: Principal, subscription_id: str
    ) -> AsyncIterator[pb.ServiceEvent]:
        """The matching events after the stored cursor, then new ones as they are appended.
        Does not move the cursor."""
        record = await self._own(principal, subscription_id)
        matcher = Matcher.of(record.subscription)
        position = record.cursor
        while True:
            events, _ = await self._reader.read(position, STREAM_PAGE)
            if not events:
                await self._reader.wait_beyond(position)
                continue
            for event in events:
                position = event.sequence
                if matcher.matches(event):
                    yield event

    # -- helpers -----------------------------------------------------------------------------

    async def _own(
        self, principal: Principal, subscription_id: str
    ) -> pb.EventSubscriptionResponse:
        """The stored record (its cursor as stored now), if the caller may use it."""
        record = await self._writer.read(subscription_id)
        if not _visible(principal, record):
            raise not_found(subscription_id)
        return record

    def _read(self, cached: pb.EventSubscriptionResponse) -> pb.EventSubscriptionResponse:
        out = pb.EventSubscriptionResponse()
        out.CopyFrom(cached)  # the cached one is shared and immutable
        out.head = max(self._reader.tail.head, out.cursor)
        return out

    async def _read_your_write(self, revision: int) -> None:
        if await self._index.wait_for(revision, READ_YOUR_WRITES_TIMEOUT):
            return
        self._index.read_your_writes_timeouts += 1
        log.warning(
            "read-your-writes: the subscription index has not applied revision %d after %.1fs",
            revision,
            READ_YOUR_WRITES_TIMEOUT,
        )

    def _now(self) -> timestamp_pb2.Timestamp:
        ts = timestamp_pb2.Timestamp()
        ts.FromNanoseconds(int(self._clock.now() * 1e9))
        return ts


def _visible(principal: Principal, record: pb.EventSubscriptionResponse) -> bool:
    return principal.is_admin or record.subscription.subscriber_id == principal.subject


def _batch(events: list[pb.ServiceEvent], cursor: int, more: bool) -> pb.EventBatch:
    return pb.EventBatch(events=events, cursor=cursor, more=more)
