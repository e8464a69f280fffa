"""The queue's read side: an index of the messages that are not final yet, per destination, in
delivery order, plus the consumer configurations; on the watchcache reflector (one watch on
/lucid-messaging/).

* Order: per destination, (priority descending, the record's create_revision): FIFO within a
  priority in store commit order. A message re-queued after a failed attempt or replayed keeps
  its place (its key, and so its create_revision, never changes).
* Final messages (delivered, failed, expired) leave memory at once; only (final time, id,
  mod_revision) of the ones that are not dead-lettered is kept, oldest first, for retention.
  Status reads go to the store by key.
* A replica that wrote a record knows the result before its watch does: ``note`` applies it at
  once (claims must not be attempted twice), and the watch later skips what is not newer.
* ``listen`` callbacks hear every change of a message (and of a consumer configuration)
  synchronously, in store order: the dispatcher, the pusher and long polls wake from them.
"""

from __future__ import annotations

import bisect
import logging
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from lucid_cp.api.lucid.messaging.v1 import messages_pb2 as pb
from lucid_cp.api.lucid.messaging.v1 import queue_storage_pb2 as spb
from lucid_cp.clock import Clock
from lucid_cp.messaging import keys, records
from lucid_cp.store.base import EventType, KeyValue, WatchedPrefix, WatchEvent
from lucid_cp.watchcache import Handler, Reflector

log = logging.getLogger("lucid_cp.messaging.index")

Listener = Callable[[str, str, "Entry | None"], None]  # (destination, message id, entry or None)
ConfigListener = Callable[[str, "pb.ConsumerConfigResponse | None"], None]


@dataclass(slots=True)
class Entry:
    """A message that is not final, as last written."""

    message_id: str
    record: spb.StoredMessage
    mod_revision: int
    create_revision: int

    @property
    def destination(self) -> str:
        return self.record.message.destination

    @property
    def rank(self) -> tuple[int, int, str]:
        return (-self.record.message.priority, self.create_revision, self.message_id)


@dataclass(slots=True)
class _Queue:
    order: list[tuple[int, int, str]] = field(default_factory=list)
    processing: set[str] = field(default_factory=set)


class _Keys(Handler[pb.ConsumerConfigResponse]):
    """Consumer configurations are the cached values; message records are kept by the index
    itself (``other``), dead-letter keys are not kept at all."""

    def __init__(self, index: QueueIndex) -> None:
        self._index = index

    def key(self, store_key: bytes) -> str | None:
        return keys.consumer_of(store_key)

    def decode(self, key: str, kv: KeyValue) -> pb.ConsumerConfigResponse:
        record = pb.ConsumerConfigResponse.FromString(kv.value)
        if record.service_name != key:
            raise ValueError(f"the record holds serviceName {record.service_name!r}")
        record.revision = kv.mod_revision
        return record

    def other(self, event: WatchEvent) -> None:
        self._index.apply_event(event)

    def reset(self) -> None:
        self._index.reset()

    def stored(
        self, key: str, value: pb.ConsumerConfigResponse, previous: pb.ConsumerConfigResponse | None
    ) -> None:
        self._index.config_changed(key, value)

    def removed(self, key: str, previous: pb.ConsumerConfigResponse) -> None:
        self._index.config_changed(key, None)

    def applied(self, revision: int) -> None:
        self._index.applied(revision)


class QueueIndex:
    def __init__(self, store: WatchedPrefix, *, clock: Clock) -> None:
        self._entries: dict[str, Entry] = {}
        self._queues: dict[str, _Queue] = {}
        # (final time, message id, mod_revision) of final records that are not dead-lettered.
        self._finals: deque[tuple[float, str, int]] = deque()
        self._finals_unsorted = False
        # Records this replica wrote, by id: mod_revision, until the watch catches up.
        self._noted: dict[str, int] = {}
        self._listeners: list[Listener] = []
        self._config_listeners: list[ConfigListener] = []
        self._cache: Reflector[pb.ConsumerConfigResponse] = Reflector(
            store, keys.PREFIX, _Keys(self), clock=clock, history=16, name="messaging"
        )

    async def start(self) -> None:
        await self._cache.start()

    async def stop(self) -> None:
        await self._cache.stop()

    @property
    def revision(self) -> int:
        return self._cache.revision

    @property
    def connected(self) -> bool:
        return self._cache.connected

    async def wait_for(self, revision: int, timeout: float) -> bool:
        return await self._cache.wait_for(revision, timeout)

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def listen_configs(self, listener: ConfigListener) -> None:
        self._config_listeners.append(listener)

    # -- reads -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, message_id: str) -> Entry | None:
        return self._entries.get(message_id)

    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def in_order(self, destination: str) -> Iterator[Entry]:
        """The destination's messages that are not final, in delivery order (a snapshot: safe
        to await between items)."""
        queue = self._queues.get(destination)
        if queue is None:
            return
        for _, _, message_id in list(queue.order):
            entry = self._entries.get(message_id)
            if entry is not None:
                yield entry

    def candidates(
        self, destination: str, limit: int, now: float, skip: set[str]
    ) -> tuple[list[Entry], list[Entry], float | None]:
        """Up to ``limit`` messages of ``destination`` that may be claimed now, in delivery
        order, skipping ``skip`` (claims in flight here); the queued ones found expired on the
        way; and the earliest time a message now in backoff becomes due (None: none is)."""
        ready: list[Entry] = []
        stale: list[Entry] = []
        next_due: float | None = None
        queue = self._queues.get(destination)
        if queue is None or limit <= 0:
            return ready, stale, next_due
        for _, _, message_id in queue.order:
            if message_id in skip or message_id in queue.processing:
                continue
            entry = self._entries[message_id]
            record = entry.record
            if records.expired(record, now):
                stale.append(entry)
            elif records.due(record, now):
                ready.append(entry)
                if len(ready) >= limit:
                    break
            elif record.state == records.QUEUED:
                at = records.seconds(record.next_attempt_at)
                next_due = at if next_due is None else min(next_due, at)
        return ready, stale, next_due

    def waiting(self, destination: str) -> int:
        """How many of the destination's messages are queued (due or backing off)."""
        queue = self._queues.get(destination)
        return len(queue.order) - len(queue.processing) if queue is not None else 0

    def processing(self, destination: str) -> int:
        """How many of the destination's messages are being processed, on any replica."""
        queue = self._queues.get(destination)
        return len(queue.processing) if queue is not None else 0

    def config(self, service_name: str) -> pb.ConsumerConfigResponse | None:
        return self._cache.get(service_name)

    def configs(self) -> list[pb.ConsumerConfigResponse]:
        return list(self._cache.values())

    def expired_finals(self, before: float) -> list[tuple[str, int]]:
        """(id, mod_revision) of final records (not dead-lettered) that became final before
        ``before``; they are forgotten here (the caller deletes them)."""
        if self._finals_unsorted:
            self._finals = deque(sorted(self._finals))
            self._finals_unsorted = False
        out: list[tuple[str, int]] = []
        while self._finals and self._finals[0][0] < before:
            _, message_id, revision = self._finals.popleft()
            out.append((message_id, revision))
        return out

    # -- applying ----------------------------------------------------------------------------

    def note(self, kv: KeyValue, record: spb.StoredMessage | None = None) -> None:
        """A message record this replica wrote or read (a txn's result): applied now, unless the
        index already holds something newer. ``record``: ``kv.value`` decoded, when the caller
        has it (records are never changed in place: every transition makes a new one)."""
        message_id = keys.message_id_of(kv.key)
        if message_id is None:
            return
        if kv.mod_revision <= self._cache.revision:
            return  # the watch has applied it, or something newer
        if self._noted.get(message_id, 0) >= kv.mod_revision:
            return
        self._noted[message_id] = kv.mod_revision
        self._put(message_id, kv, record)

    def apply_event(self, event: WatchEvent) -> None:
        message_id = keys.message_id_of(event.kv.key)
        if message_id is None:
            return
        noted = self._noted.get(message_id)
        if noted is not None:
            if event.kv.mod_revision < noted:
                return  # older than what this replica already applied
            del self._noted[message_id]
            if event.kv.mod_revision == noted and event.type is EventType.PUT:
                return
        if event.type is EventType.PUT:
            try:
                self._put(message_id, event.kv)
            except Exception as exc:  # a bad record never stalls the index
                log.error("messaging: bad record %r (%s); ignored", event.kv.key, exc)
                self._drop(message_id, None)
        else:
            self._drop(message_id, None)

    def _put(self, message_id: str, kv: KeyValue, record: spb.StoredMessage | None = None) -> None:
        if record is None:
            record = spb.StoredMessage.FromString(kv.value)
        if record.message.message_id != message_id:
            raise ValueError(f"the record holds messageId {record.message.message_id!r}")
        if record.state in records.FINAL:
            self._drop(message_id, record)
            if not record.dead_lettered:
                self._finals.append(
                    (records.seconds(record.updated_at), message_id, kv.mod_revision)
                )
            return
        entry = Entry(message_id, record, kv.mod_revision, kv.create_revision)
        previous = self._entries.get(message_id)
        if previous is not None and previous.destination != entry.destination:
            self._drop(message_id, None)
            previous = None
        queue = self._queues.setdefault(entry.destination, _Queue())
        if previous is None:
            bisect.insort(queue.order, entry.rank)
        if record.state == records.PROCESSING:
            queue.processing.add(message_id)
        else:
            queue.processing.discard(message_id)
        self._entries[message_id] = entry
        self._tell(entry.destination, message_id, entry)

    def _drop(self, message_id: str, final: spb.StoredMessage | None) -> None:
        entry = self._entries.pop(message_id, None)
        if entry is None:
            if final is not None:
                self._tell(final.message.destination, message_id, None)
            return
        queue = self._queues[entry.destination]
        rank = entry.rank
        position = bisect.bisect_left(queue.order, rank)
        if position < len(queue.order) and queue.order[position] == rank:
            del queue.order[position]
        queue.processing.discard(message_id)
        if not queue.order:
            del self._queues[entry.destination]
        self._tell(entry.destination, message_id, None)

    def _tell(self, destination: str, message_id: str, entry: Entry | None) -> None:
        for listener in self._listeners:
            listener(destination, message_id, entry)

    def reset(self) -> None:
        self._entries.clear()
        self._queues.clear()
        self._finals.clear()
        self._noted.clear()
        self._finals_unsorted = True

    def applied(self, revision: int) -> None:
        for message_id in [m for m, r in self._noted.items() if r <= revision]:
            del self._noted[message_id]

    def config_changed(self, service_name: str, record: pb.ConsumerConfigResponse | None) -> None:
        for listener in self._config_listeners:
            listener(service_name, record)
