"""The log: appends with sequences (group commit) and reads by key range. Pure asyncio over
narrow store interfaces and the Clock; it never imports grpc.

APPEND. One txn appends k events: it compares the head (/lucid-events/head: its mod_revision,
or that it is absent) and that none of the k eventIds is recorded yet, then puts head = n + k,
the k log records (sequences n+1 .. n+k, in queue order) and the k idempotency records. So
sequence order is store order and nothing is half-written. The failure branch reads the head
and the id records back: a lost head race is retried at once with the head read; an id already
recorded answers its publisher with the first answer (same content digest) or EventIdConflict
(other content); internal events (the control plane's own, with deterministic ids) take the
first answer silently whatever their content. The publisher's future resolves only after the
txn returned: a 202 means stored.

GROUP COMMIT. Publishes queue up; one flusher takes what is queued (at most ``max_batch``
events and what fits one store request: ``MAX_TXN_OPS`` ops and ``MAX_REQUEST_BYTES``) into
one txn, and while that txn is in flight the next batch gathers. No timer: an idle log commits
a lone event at once, a busy one commits up to ``max_batch`` per round trip.

READ. ``read(after, limit)`` ranges the log from sequence after + 1. Sequences are dense except
for the prefix retention deleted, so a first sequence above after + 1 (or nothing, when the
retention record says the events after the cursor are gone) is a gap: CursorBehindRetention,
never a silent skip.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from lucid_cp.api.lucid.messaging.v1 import event_storage_pb2 as spb
from lucid_cp.api.lucid.messaging.v1 import events_pb2 as pb
from lucid_cp.clock import Clock
from lucid_cp.events import keys
from lucid_cp.events.errors import CursorBehindRetention, EventIdConflict
from lucid_cp.store.base import (
    MAX_REQUEST_BYTES,
    MAX_TXN_OPS,
    OP_OVERHEAD_BYTES,
    Compare,
    Get,
    KeyReader,
    KeyValue,
    KeyWriter,
    Put,
    key_missing,
    mod_revision_is,
)
from lucid_cp.tasks import cancel_and_wait

log = logging.getLogger("lucid_cp.events.log")

# Events per append txn: 1 + 2k puts and 1 + k compares must stay within MAX_TXN_OPS (128).
MAX_BATCH = 40
# What one append txn may carry, leaving room for the head and every op's overhead.
BATCH_BYTES = MAX_REQUEST_BYTES - 64 * 1024
# Per event, besides the event itself: its keys (log, id: compare, put, get), the id record and
# every op's overhead.
_PER_EVENT_BYTES = 6 * OP_OVERHEAD_BYTES + 512
# Log records read per range.
READ_PAGE = 100
assert 1 + 2 * MAX_BATCH <= MAX_TXN_OPS


class LogStore(KeyReader, KeyWriter, Protocol):
    """The store methods the log uses: reads and txns."""


def digest_of(event: pb.ServiceEvent) -> bytes:
    """What "the same content" means for a re-published eventId: the event as published
    (defaults applied, sequence cleared), serialized deterministically."""
    copy = pb.ServiceEvent()
    copy.CopyFrom(event)
    copy.sequence = 0
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).digest()


def _timestamp_now(clock: Clock, target: pb.ServiceEvent | spb.StoredEvent) -> None:
    stamp = target.timestamp if isinstance(target, pb.ServiceEvent) else target.appended_at
    stamp.FromNanoseconds(int(clock.now() * 1e9))


@dataclass(eq=False)
class _Pending:
    event: pb.ServiceEvent
    digest: bytes
    internal: bool
    future: asyncio.Future[pb.EventResponse]
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = self.event.ByteSize() + _PER_EVENT_BYTES


class EventLog:
    def __init__(self, store: LogStore, clock: Clock, *, max_batch: int = MAX_BATCH) -> None:
        if not 1 <= max_batch <= MAX_BATCH:
            raise ValueError(f"max_batch must be within 1..{MAX_BATCH}")
        self._store = store
        self._clock = clock
        self._max_batch = max_batch
        self._queue: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # The head as last seen: (sequence, mod_revision of the head key; 0 = absent).
        self._head = (0, 0)
        self.txns = 0  # append txns committed (metrics, tests)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="events-appender")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.cancel()

    # -- appending ---------------------------------------------------------------------------

    async def append(self, event: pb.ServiceEvent, *, internal: bool = False) -> pb.EventResponse:
        """Appends ``event`` (a timestamp is set when absent; ``sequence`` is replaced) and
        returns the answer once it is stored, or the first answer for an eventId recorded
        before (EventIdConflict when its content differs, unless ``internal``)."""
        if self._task is None:
            raise RuntimeError("the event log is not started")
        event.sequence = 0
        digest = digest_of(event)
        if not event.HasField("timestamp"):
            _timestamp_now(self._clock, event)
        future: asyncio.Future[pb.EventResponse] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(event, digest, internal, future))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            batch = self._take()
            try:
                await self._commit(batch)
            except Exception as exc:
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)

    def _take(self) -> list[_Pending]:
        """The queued events that fit one txn, oldest first; a second event with an eventId
        already in the batch waits for the next one (it will find the first recorded)."""
        batch: list[_Pending] = []
        later: list[_Pending] = []
        ids: set[str] = set()
        size = 0
        while self._queue and len(batch) < self._max_batch:
            pending = self._queue[0]
            if pending.future.done():  # its publisher went away before it was sent
                self._queue.popleft()
                continue
            if batch and size + pending.size > BATCH_BYTES:
                break
            self._queue.popleft()
            if pending.event.event_id in ids:
                later.append(pending)
                continue
            ids.add(pending.event.event_id)
            batch.append(pending)
            size += pending.size
        self._queue.extendleft(reversed(later))
        return batch

    async def _commit(self, batch: list[_Pending]) -> None:
        items = batch
        while items:
            sequence, head_revision = self._head
            now = spb.StoredEvent()
            _timestamp_now(self._clock, now)
            success: list[Put] = [Put(keys.HEAD, str(sequence + len(items)).encode())]
            responses: list[pb.EventResponse] = []
            for offset, pending in enumerate(items, start=1):
                stored = spb.StoredEvent(appended_at=now.appended_at)
                stored.event.CopyFrom(pending.event)
                stored.event.sequence = sequence + offset
                response = pb.EventResponse(
                    event_id=pending.event.event_id,
                    sequence=sequence + offset,
                    accepted_at=now.appended_at,
                )
                record = spb.StoredEventId(response=response, digest=pending.digest)
                success.append(Put(keys.log_key(sequence + offset), stored.SerializeToString()))
                success.append(Put(keys.id_key(pending.event.event_id), record.SerializeToString()))
                responses.append(response)
            head_guard = (
                mod_revision_is(keys.HEAD, head_revision)
                if head_revision
                else key_missing(keys.HEAD)
            )
            compares: list[Compare] = [head_guard]
            compares += [key_missing(keys.id_key(p.event.event_id)) for p in items]
            failure = [Get(keys.HEAD)] + [Get(keys.id_key(p.event.event_id)) for p in items]
            result = await self._store.txn(compares, success, failure)
            if result.succeeded:
                self.txns += 1
                self._head = (sequence + len(items), result.revision)
                for pending, response in zip(items, responses, strict=True):
                    response.revision = result.revision
                    if not pending.future.done():
                        pending.future.set_result(response)
                return
            head = result.responses[0]
            if isinstance(head, KeyValue):
                self._head = (keys.parse_int(head.value, 0), head.mod_revision)
            else:
                self._head = (0, 0)
            items = self._settle_recorded(items, result.responses[1:])

    @staticmethod
    def _settle_recorded(
        items: Sequence[_Pending], records: Sequence[KeyValue | int | None]
    ) -> list[_Pending]:
        """Answers the events whose eventId is recorded; returns the others."""
        remaining: list[_Pending] = []
        for pending, kv in zip(items, records, strict=True):
            if not isinstance(kv, KeyValue):
                remaining.append(pending)
                continue
            record = spb.StoredEventId.FromString(kv.value)
            first = record.response
            first.revision = kv.create_revision
            if pending.future.done():
                continue
            if pending.internal or record.digest == pending.digest:
                pending.future.set_result(first)
            else:
                pending.future.set_exception(
                    EventIdConflict(
                        f"event {pending.event.event_id} was published before with other content",
                        details={
                            "eventId": pending.event.event_id,
                            "sequence": first.sequence,
                            "revision": first.revision,
                        },
                    )
                )
        return remaining

    # -- reading -----------------------------------------------------------------------------

    async def head(self) -> int:
        """The last appended sequence, read from the store."""
        kv = await self._store.get(keys.HEAD)
        return keys.parse_int(kv.value if kv is not None else None, 0)

    async def oldest(self) -> int:
        """The oldest retained sequence (what retention recorded; 1 before any sweep)."""
        kv = await self._store.get(keys.RETENTION)
        return keys.parse_int(kv.value if kv is not None else None, 1)

    async def read(self, after: int, limit: int = READ_PAGE) -> tuple[list[pb.ServiceEvent], bool]:
        """(the events with sequences after + 1 .. in order, at most ``limit``; whether more
        follow). CursorBehindRetention when retention deleted events after ``after``."""
        page = await self._store.range(keys.LOG, start=keys.log_key(after + 1), limit=limit)
        events = [spb.StoredEvent.FromString(kv.value).event for kv in page.kvs]
        if events:
            if events[0].sequence > after + 1:
                raise CursorBehindRetention(after, events[0].sequence)
        else:
            oldest = await self.oldest()
            if after + 1 < oldest:
                raise CursorBehindRetention(after, oldest)
        return events, page.more
