"""The discovery read path: an in-memory index of every instance, on the watchcache reflector.

Discover, Resolve and Watch never touch the store. The reflector lists the discovery prefix, then
follows its watch; on compaction it re-lists and every open Watch gets a fresh snapshot; after a
store outage it resumes from the last applied revision + 1, so instances deleted meanwhile
(expired leases) are removed on reconnect. What stays here is what is discovery's own: which keys
are instances and which are load counters, the (service name, service id) order, the by-name
map, lease ids kept aside (from the store record, ``records.py``), and the Watch wire messages.

Instances held here are immutable once inserted (replaced, never mutated); active-connection
counts are kept beside them.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.clock import Clock
from lucid_cp.discovery import keys
from lucid_cp.discovery.records import decode_record
from lucid_cp.store.base import EventType, KeyValue, WatchedPrefix, WatchEvent
from lucid_cp.watchcache import Change as CacheChange
from lucid_cp.watchcache import ChangeType, Handler, Reflector, Subscription

Match = Callable[[pb.ServiceInstance], bool]
ADDED, UPDATED, REMOVED = (
    pb.WATCH_EVENT_TYPE_ADDED,
    pb.WATCH_EVENT_TYPE_UPDATED,
    pb.WATCH_EVENT_TYPE_REMOVED,
)
_WIRE_TYPE = {ChangeType.ADDED: ADDED, ChangeType.UPDATED: UPDATED, ChangeType.REMOVED: REMOVED}


@dataclass(frozen=True, slots=True)
class Change:
    revision: int
    type: pb.WatchEventType.ValueType
    instance: pb.ServiceInstance


@dataclass(frozen=True, slots=True)
class _Entry:
    """A cached instance and the lease of its record, kept aside: the lease id is internal (and,
    as a 63-bit number, unsafe in JSON)."""

    instance: pb.ServiceInstance
    lease: int


class _DiscoveryKeys(Handler[_Entry]):
    """Instances are cached by service id and grouped by service name; load counters, kept
    beside them, are side records. Keeps the derived views in step with the cache."""

    def __init__(self) -> None:
        self.load: dict[str, int] = {}
        self.by_name: dict[str, dict[str, pb.ServiceInstance]] = {}
        self.sorted: list[tuple[str, str]] = []  # (service_name, service_id)

    def key(self, store_key: bytes) -> str | None:
        parsed = keys.parse(store_key)
        return parsed[1] if parsed is not None and parsed[0] == keys.INSTANCES else None

    def decode(self, key: str, kv: KeyValue) -> _Entry:
        instance, lease = decode_record(kv.value, kv.mod_revision)
        if instance.service_id != key:
            raise ValueError(f"the record holds serviceId {instance.service_id!r}")
        return _Entry(instance, lease)

    def group(self, value: _Entry) -> str:
        return value.instance.service_name

    def other(self, event: WatchEvent) -> None:
        parsed = keys.parse(event.kv.key)
        if parsed is None or parsed[0] != keys.LOAD:
            return
        if event.type is EventType.PUT:
            self.load[parsed[1]] = _parse_load(event.kv.value)
        else:
            self.load.pop(parsed[1], None)

    def reset(self) -> None:
        self.load.clear()
        self.by_name.clear()
        self.sorted.clear()

    def stored(self, key: str, value: _Entry, previous: _Entry | None) -> None:
        name = value.instance.service_name
        if previous is None or previous.instance.service_name != name:
            if previous is not None:
                self._unlink(key, previous.instance.service_name)
            bisect.insort(self.sorted, (name, key))
        self.by_name.setdefault(name, {})[key] = value.instance

    def removed(self, key: str, previous: _Entry) -> None:
        self.load.pop(key, None)
        self._unlink(key, previous.instance.service_name)

    def _unlink(self, service_id: str, service_name: str) -> None:
        position = bisect.bisect_left(self.sorted, (service_name, service_id))
        if position < len(self.sorted) and self.sorted[position] == (service_name, service_id):
            del self.sorted[position]
        siblings = self.by_name.get(service_name)
        if siblings is not None:
            siblings.pop(service_id, None)
            if not siblings:
                del self.by_name[service_name]


class InstanceIndex:
    def __init__(
        self,
        store: WatchedPrefix,
        *,
        clock: Clock,
        history: int = 10_000,
        queue_size: int = 4096,
        list_page: int = 5_000,
    ) -> None:
        self._keys = _DiscoveryKeys()
        self._cache: Reflector[_Entry] = Reflector(
            store,
            keys.PREFIX,
            self._keys,
            clock=clock,
            history=history,
            queue_size=queue_size,
            list_page=list_page,
            name="discovery",
        )
        self.read_your_writes_timeouts = 0  # fed by the registry when wait_for gives up

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self._cache.start()

    async def stop(self) -> None:
        await self._cache.stop()

    @property
    def revision(self) -> int:
        return self._cache.revision

    @property
    def resyncs(self) -> int:
        return self._cache.resyncs

    @property
    def connected(self) -> bool:
        return self._cache.connected

    @property
    def watchers(self) -> int:
        return self._cache.subscribers

    # -- reads -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._cache)

    async def wait_for(self, revision: int, timeout: float) -> bool:
        """Waits until the index has applied ``revision`` (read-your-writes); False on timeout."""
        return await self._cache.wait_for(revision, timeout)

    def get(self, service_id: str) -> pb.ServiceInstance | None:
        entry = self._cache.get(service_id)
        return entry.instance if entry is not None else None

    def changes_since(self, revision: int) -> list[Change] | None:
        """Instance changes applied after ``revision``, oldest first (load counts excluded);
        None when the retained history no longer reaches back that far (or a re-list reset
        it): the caller must re-read everything."""
        changes = self._cache.changes_since(revision)
        if changes is None:
            return None
        return [Change(c.revision, _WIRE_TYPE[c.type], c.value.instance) for c in changes]

    def lease_of(self, service_id: str) -> int:
        """The store lease the instance lives under (0 if unknown)."""
        entry = self._cache.get(service_id)
        return entry.lease if entry is not None else 0

    def active_connections(self, service_id: str) -> int:
        return self._keys.load.get(service_id, 0)

    def of_service(self, service_name: str) -> dict[str, pb.ServiceInstance]:
        return self._keys.by_name.get(service_name, {})

    def ordered(self, service_name: str = "") -> Iterator[pb.ServiceInstance]:
        """Instances ordered by (service_name, service_id), optionally of one service only."""
        entries = self._keys.sorted
        if not service_name:
            for name, service_id in entries:
                yield self._keys.by_name[name][service_id]
            return
        position = bisect.bisect_left(entries, (service_name, ""))
        siblings = self._keys.by_name.get(service_name, {})
        while position < len(entries) and entries[position][0] == service_name:
            yield siblings[entries[position][1]]  # no slice: that would copy the tail
            position += 1

    def snapshot(self, match: Match, service_name: str = "") -> pb.WatchResponse:
        response = pb.WatchResponse(type=pb.WATCH_EVENT_TYPE_SNAPSHOT, revision=self.revision)
        response.snapshot.SetInParent()  # an empty snapshot is still a snapshot
        instances = response.snapshot.instances
        for instance in self.ordered(service_name):
            if match(instance):
                added = instances.add()
                added.CopyFrom(instance)
                added.active_connections = self._keys.load.get(instance.service_id, 0)
        return response

    # -- watches -----------------------------------------------------------------------------

    def subscribe(
        self, match: Match, *, service_name: str = "", start_revision: int = 0
    ) -> Subscription[pb.WatchResponse]:
        """Opens a Watch. start_revision 0: snapshot first. Otherwise replays retained changes
        with revision >= start_revision, or sends a snapshot if that history is gone."""
        return self._cache.subscribe(
            self._change_response,
            lambda: self.snapshot(match, service_name),
            group=service_name,
            match=lambda entry: match(entry.instance),
            start_revision=start_revision,
        )

    def _change_response(self, change: CacheChange[_Entry]) -> pb.WatchResponse:
        response = pb.WatchResponse(type=_WIRE_TYPE[change.type], revision=change.revision)
        response.instance.CopyFrom(change.value.instance)
        if change.type is not ChangeType.REMOVED:
            response.instance.active_connections = self._keys.load.get(change.key, 0)
        return response


def _parse_load(value: bytes) -> int:
    try:
        return max(0, int(value))
    except ValueError:
        return 0
