"""The discovery read path: an in-memory index of every instance, fed by one store watch.

Discover, Resolve and Watch never touch the store. The index lists the prefix once, then applies
the watch; on compaction it re-lists and every open Watch gets a fresh snapshot. A store outage
pauses the watch, which resumes from the last applied revision + 1 (the store contract guarantees
no silent skip), so instances deleted meanwhile (expired leases) are removed on reconnect.

Instances held here are immutable once inserted (replaced, never mutated) and carry no client
TLS key (redacted on the way in); active-connection counts are kept beside them.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.discovery import keys
from lucid_cp.store.base import CompactedError, EventType, KeyValue, Store, WatchBatch

log = logging.getLogger("lucid_cp.discovery.index")

Match = Callable[[pb.ServiceInstance], bool]
ADDED, UPDATED, REMOVED = (
    pb.WATCH_EVENT_TYPE_ADDED,
    pb.WATCH_EVENT_TYPE_UPDATED,
    pb.WATCH_EVENT_TYPE_REMOVED,
)


@dataclass(frozen=True, slots=True)
class Change:
    revision: int
    type: pb.WatchEventType.ValueType
    instance: pb.ServiceInstance


def decode_instance(value: bytes, mod_revision: int) -> pb.ServiceInstance:
    instance = pb.ServiceInstance.FromString(value)
    instance.revision = mod_revision
    return instance


def _decode_record(kv: KeyValue, service_id: str) -> pb.ServiceInstance | None:
    """The instance stored at ``kv``, or None (logged) if the record is not a valid instance
    for its key: one bad record must never stall the index."""
    try:
        instance = decode_instance(kv.value, kv.mod_revision)
    except DecodeError:
        log.error(
            "undecodable discovery record %r at revision %d; ignored", kv.key, kv.mod_revision
        )
        return None
    if instance.service_id != service_id:
        log.error("discovery record %r holds serviceId %r; ignored", kv.key, instance.service_id)
        return None
    return instance


class Subscription:
    """One Watch stream's queue. Overflow never drops silently: the stream is resynced with a
    fresh snapshot instead."""

    def __init__(self, index: InstanceIndex, match: Match, service_name: str, maxsize: int) -> None:
        self._index = index
        self.match = match
        self.service_name = service_name
        self._maxsize = maxsize
        self._queue: deque[pb.WatchResponse] = deque()
        self._wakeup = asyncio.Event()
        self.needs_snapshot = False

    def push(self, response: pb.WatchResponse) -> None:
        if self.needs_snapshot:
            return
        if len(self._queue) >= self._maxsize:
            self.resync()
            return
        self._queue.append(response)
        self._wakeup.set()

    def resync(self) -> None:
        self._queue.clear()
        self.needs_snapshot = True
        self._wakeup.set()

    def close(self) -> None:
        self._index._unsubscribe(self)

    async def aclose(self) -> None:
        """Ends the subscription; the server calls it when the stream ends or is cancelled."""
        self.close()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> pb.WatchResponse:
        while True:
            if self.needs_snapshot:
                self.needs_snapshot = False
                return self._index.snapshot(self.match, self.service_name)
            if self._queue:
                return self._queue.popleft()
            self._wakeup.clear()
            await self._wakeup.wait()


class InstanceIndex:
    def __init__(
        self,
        store: Store,
        *,
        history: int = 10_000,
        queue_size: int = 4096,
        list_page: int = 5_000,
    ) -> None:
        self._store = store
        self._list_page = list_page
        self._instances: dict[str, pb.ServiceInstance] = {}
        self._load: dict[str, int] = {}
        self._leases: dict[str, int] = {}
        self._by_name: dict[str, dict[str, pb.ServiceInstance]] = {}
        self._sorted: list[tuple[str, str]] = []  # (service_name, service_id)
        self._history: deque[Change] = deque(maxlen=history)
        self._history_floor = 0  # history holds every change with revision >= this
        self._subscribers: set[Subscription] = set()
        self._queue_size = queue_size
        self._advanced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.revision = 0
        self.resyncs = 0
        self.connected = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self._relist()
        self._task = asyncio.create_task(self._run(), name="discovery-index-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            try:
                async for batch in self._store.watch(keys.PREFIX, self.revision + 1):
                    self.connected = True
                    backoff = 0.05
                    self._apply(batch)
            except CompactedError as exc:
                log.warning("watch compacted at %s; re-listing", exc.compact_revision)
                await self._relist_until_done()
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.connected = False
                log.warning("discovery watch interrupted (%s); retrying in %.2fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _relist_until_done(self) -> None:
        backoff = 0.05
        while True:
            try:
                await self._relist()
                return
            except CompactedError:
                continue
            except Exception as exc:
                log.warning("discovery re-list failed (%s); retrying in %.2fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _relist(self) -> None:
        revision, kvs = await self._list_all()
        self._instances.clear()
        self._load.clear()
        self._leases.clear()
        self._by_name.clear()
        self._sorted.clear()
        for kv in kvs:
            parsed = keys.parse(kv.key)
            if parsed is None:
                continue
            kind, service_id = parsed
            if kind == keys.INSTANCES:
                instance = _decode_record(kv, service_id)
                if instance is not None:
                    self._insert(instance)
            else:
                self._load[service_id] = _parse_load(kv.value)
        self.revision = revision
        self._history.clear()
        self._history_floor = revision + 1
        self.resyncs += 1
        self.connected = True
        for sub in self._subscribers:
            sub.resync()
        self._signal()

    async def _list_all(self) -> tuple[int, list[KeyValue]]:
        """Every discovery key, paged at one pinned revision (one consistent snapshot without
        one huge response)."""
        page = await self._store.range(keys.PREFIX, limit=self._list_page)
        kvs = list(page.kvs)
        while page.more and page.kvs:
            page = await self._store.range(
                keys.PREFIX,
                limit=self._list_page,
                revision=page.revision,
                start=page.kvs[-1].key + b"\0",
            )
            kvs.extend(page.kvs)
        return page.revision, kvs

    # -- applying the watch ------------------------------------------------------------------

    def _apply(self, batch: WatchBatch) -> None:
        for event in batch.events:
            parsed = keys.parse(event.kv.key)
            if parsed is None:
                continue
            kind, service_id = parsed
            if kind == keys.LOAD:
                if event.type is EventType.PUT:
                    self._load[service_id] = _parse_load(event.kv.value)
                else:
                    self._load.pop(service_id, None)
                continue
            instance = _decode_record(event.kv, service_id) if event.type is EventType.PUT else None
            if instance is not None:
                change_type = UPDATED if service_id in self._instances else ADDED
                self._insert(instance)
                self._publish(Change(batch.revision, change_type, instance))
            else:
                old = self._remove(service_id)
                if old is not None:
                    self._publish(Change(batch.revision, REMOVED, old))
        self.revision = batch.revision
        self._signal()

    def _insert(self, instance: pb.ServiceInstance) -> None:
        if instance.endpoint.tls.client_key:
            instance.endpoint.tls.client_key = ""
        # The lease id is internal (and, as a 63-bit number, unsafe in JSON): kept aside.
        self._leases[instance.service_id] = instance.lease_id
        instance.ClearField("lease_id")
        previous = self._instances.get(instance.service_id)
        if previous is None:
            bisect.insort(self._sorted, (instance.service_name, instance.service_id))
        self._instances[instance.service_id] = instance
        self._by_name.setdefault(instance.service_name, {})[instance.service_id] = instance

    def _remove(self, service_id: str) -> pb.ServiceInstance | None:
        old = self._instances.pop(service_id, None)
        if old is None:
            return None
        self._load.pop(service_id, None)
        self._leases.pop(service_id, None)
        position = bisect.bisect_left(self._sorted, (old.service_name, service_id))
        del self._sorted[position]
        siblings = self._by_name.get(old.service_name)
        if siblings is not None:
            siblings.pop(service_id, None)
            if not siblings:
                del self._by_name[old.service_name]
        return old

    def _publish(self, change: Change) -> None:
        if len(self._history) == self._history.maxlen:
            # The oldest change falls out: resuming from its revision is no longer possible.
            self._history_floor = self._history[0].revision + 1
        self._history.append(change)
        if not self._subscribers:
            return
        response: pb.WatchResponse | None = None
        for sub in self._subscribers:
            if sub.service_name and sub.service_name != change.instance.service_name:
                continue
            if not sub.match(change.instance):
                continue
            if response is None:
                response = self._change_response(change)
            sub.push(response)

    def _change_response(self, change: Change) -> pb.WatchResponse:
        response = pb.WatchResponse(type=change.type, revision=change.revision)
        response.instance.CopyFrom(change.instance)
        if change.type != REMOVED:
            response.instance.active_connections = self._load.get(change.instance.service_id, 0)
        return response

    def _signal(self) -> None:
        advanced, self._advanced = self._advanced, asyncio.Event()
        advanced.set()

    # -- reads -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._instances)

    @property
    def watchers(self) -> int:
        return len(self._subscribers)

    async def wait_for(self, revision: int, timeout: float) -> bool:
        """Waits until the index has applied ``revision`` (read-your-writes); False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.revision < revision:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._advanced.wait(), remaining)
            except TimeoutError:
                return False
        return True

    def get(self, service_id: str) -> pb.ServiceInstance | None:
        return self._instances.get(service_id)

    def changes_since(self, revision: int) -> list[Change] | None:
        """Instance changes applied after ``revision``, oldest first (load counts excluded);
        None when the retained history no longer reaches back that far (or a re-list reset
        it): the caller must re-read everything."""
        if revision + 1 < self._history_floor:
            return None
        changes: list[Change] = []
        for change in reversed(self._history):
            if change.revision <= revision:
                break
            changes.append(change)
        changes.reverse()
        return changes

    def lease_of(self, service_id: str) -> int:
        """The store lease the instance lives under (0 if unknown)."""
        return self._leases.get(service_id, 0)

    def active_connections(self, service_id: str) -> int:
        return self._load.get(service_id, 0)

    def of_service(self, service_name: str) -> dict[str, pb.ServiceInstance]:
        return self._by_name.get(service_name, {})

    def ordered(self, service_name: str = "") -> Iterator[pb.ServiceInstance]:
        """Instances ordered by (service_name, service_id), optionally of one service only."""
        if not service_name:
            for _, service_id in self._sorted:
                yield self._instances[service_id]
            return
        entries = self._sorted
        position = bisect.bisect_left(entries, (service_name, ""))
        while position < len(entries) and entries[position][0] == service_name:
            yield self._instances[entries[position][1]]  # no slice: that would copy the tail
            position += 1

    def snapshot(self, match: Match, service_name: str = "") -> pb.WatchResponse:
        response = pb.WatchResponse(type=pb.WATCH_EVENT_TYPE_SNAPSHOT, revision=self.revision)
        for instance in self.ordered(service_name):
            if match(instance):
                added = response.instances.add()
                added.CopyFrom(instance)
                added.active_connections = self._load.get(instance.service_id, 0)
        return response

    # -- watches -----------------------------------------------------------------------------

    def subscribe(
        self, match: Match, *, service_name: str = "", start_revision: int = 0
    ) -> Subscription:
        """Opens a Watch. start_revision 0: snapshot first. Otherwise replays retained changes
        with revision >= start_revision, or sends a snapshot if that history is gone."""
        sub = Subscription(self, match, service_name, self._queue_size)
        if start_revision <= 0 or start_revision < self._history_floor:
            sub.needs_snapshot = True
        else:
            for change in self._history:
                if change.revision < start_revision:
                    continue
                if service_name and change.instance.service_name != service_name:
                    continue
                if match(change.instance):
                    sub.push(self._change_response(change))
        self._subscribers.add(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)


def _parse_load(value: bytes) -> int:
    try:
        return max(0, int(value))
    except ValueError:
        return 0
