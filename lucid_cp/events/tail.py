"""The log's tail on this replica: one store watch on /lucid-events/log/ that tells streams, long
polls and push loops when new events exist, and keeps a bounded ring of the newest ones so that
followers at the head read them without a store round trip each.

It never holds the whole log (retention keeps up to a million events): only the newest ``ring``
events and at most ``ring_bytes`` of them, the contiguous sequences ``floor + 1 .. head``. Older sequences are read from the store
(``EventLog.read``), which also reports retention gaps. Sequences are dense and appended in
order, so the watch's puts arrive in sequence order; retention's deletes of the oldest move the
floor up. After a compaction (the watch cannot resume) the ring starts empty at the current head;
after a store outage the watch resumes from the last applied revision + 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from lucid_cp.api.lucid.messaging.v1 import event_storage_pb2 as spb
from lucid_cp.api.lucid.messaging.v1 import events_pb2 as pb
from lucid_cp.clock import Clock
from lucid_cp.events import keys
from lucid_cp.store.base import (
    CompactedError,
    EventType,
    StoreError,
    WatchBatch,
    WatchedPrefix,
)
from lucid_cp.tasks import cancel_and_wait
from lucid_cp.watchcache import Backoff
from lucid_cp.watchcache.waiters import RevisionWaiters

log = logging.getLogger("lucid_cp.events.tail")

RING = 10_000
RING_BYTES = 64 * 1024 * 1024


class LogTail:
    def __init__(
        self,
        store: WatchedPrefix,
        clock: Clock,
        *,
        ring: int = RING,
        ring_bytes: int = RING_BYTES,
        backoff: Backoff | None = None,
    ) -> None:
        if ring < 1:
            raise ValueError("the ring holds at least one event")
        self._store = store
        self._clock = clock
        self._capacity = ring
        self._max_bytes = ring_bytes
        self._bytes = 0
        self._backoff = backoff or Backoff()
        self._ring: dict[int, pb.ServiceEvent] = {}
        self._floor = 0  # the ring holds floor + 1 .. head
        self.head = 0  # the newest sequence this replica has seen
        self.revision = 0  # every log change up to here has been applied
        self.connected = False
        self.resyncs = 0
        self._changed = asyncio.Event()
        self._waiters = RevisionWaiters(clock)
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self._resync()
        self._task = asyncio.create_task(self._run(), name="events-tail")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        self.connected = False

    async def _resync(self) -> None:
        """Starts over at the current head: the ring empty, its floor there."""
        page = await self._store.range(keys.HEAD)
        head = next((kv for kv in page.kvs if kv.key == keys.HEAD), None)
        sequence = keys.parse_int(head.value if head is not None else None, 0)
        self._ring.clear()
        self._bytes = 0
        self._floor = sequence
        self.head = max(self.head, sequence)
        self.revision = page.revision
        self.resyncs += 1
        self.connected = True
        self._notify()

    async def _run(self) -> None:
        delay = self._backoff.initial
        while True:
            try:
                watch = self._store.watch(keys.LOG, self.revision + 1)
                try:
                    async for batch in watch:
                        self.connected = True
                        delay = self._backoff.initial
                        self._apply(batch)
                finally:
                    close = getattr(watch, "aclose", None)
                    if close is not None:
                        with contextlib.suppress(Exception):
                            await close()
                reason = "watch ended"
            except CompactedError:
                log.warning("events tail: watch compacted; starting over at the head")
                try:
                    await self._resync()
                    continue
                except StoreError as exc:
                    reason = str(exc) or type(exc).__name__
            except StoreError as exc:
                reason = str(exc) or type(exc).__name__
            self.connected = False
            log.warning("events tail: watch interrupted (%s); retrying in %.2fs", reason, delay)
            await self._clock.sleep(delay)
            delay = self._backoff.next(delay)

    def _apply(self, batch: WatchBatch) -> None:
        for event in batch.events:
            sequence = keys.sequence_of(event.kv.key)
            if sequence is None:
                continue
            if event.type is EventType.DELETE:
                self._drop_through(sequence)
                continue
            try:
                stored = spb.StoredEvent.FromString(event.kv.value).event
            except Exception:
                log.error("events tail: bad log record %r; skipped", event.kv.key)
                continue
            self.head = max(self.head, sequence)
            if sequence == self._floor + len(self._ring) + 1:
                self._ring[sequence] = stored
                self._bytes += stored.ByteSize()
                while len(self._ring) > self._capacity or (
                    self._bytes > self._max_bytes and len(self._ring) > 1
                ):
                    self._drop_through(self._floor + 1)
        self.revision = batch.revision
        self._waiters.advance(batch.revision)
        self._notify()

    def _drop_through(self, sequence: int) -> None:
        while self._floor < sequence:
            self._floor += 1
            dropped = self._ring.pop(self._floor, None)
            if dropped is not None:
                self._bytes -= dropped.ByteSize()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # -- reads -------------------------------------------------------------------------------

    def recent(self, after: int, limit: int) -> list[pb.ServiceEvent] | None:
        """The ring's events after ``after`` (at most ``limit``), None when the ring does not
        reach back to after + 1 (read the store instead). The messages are shared: copy before
        changing them."""
        if after < self._floor:
            return None
        out: list[pb.ServiceEvent] = []
        sequence = after + 1
        while len(out) < limit:
            event = self._ring.get(sequence)
            if event is None:
                break
            out.append(event)
            sequence += 1
        return out

    async def wait_beyond(self, sequence: int) -> None:
        """Returns once this replica has seen an event after ``sequence`` (bound it with the
        clock's timeout)."""
        while self.head <= sequence:
            await self._changed.wait()

    async def wait_for(self, revision: int, timeout: float) -> bool:
        """Waits until the tail has applied ``revision``; False on timeout."""
        return await self._waiters.wait(revision, timeout)
