"""InstanceIndex.changes_since: the incremental feed the checker follows instead of re-scanning."""

from __future__ import annotations

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.clock import SystemClock
from lucid_cp.discovery.index import InstanceIndex
from lucid_cp.discovery.registry import Registry
from lucid_cp.store.memory import MemoryStore

from .conftest import registration
from .harness import ADMIN


async def test_changes_since_lists_instance_changes_only_and_says_when_history_is_gone() -> None:
    store = MemoryStore()
    index = InstanceIndex(store, clock=SystemClock(), history=3)
    await index.start()
    registry = Registry(store, index, SystemClock())
    try:
        start = index.revision
        assert index.changes_since(start) == []
        a, b = registration(1), registration(2)
        await registry.register(ADMIN, a)
        await registry.register(ADMIN, b)
        await registry.heartbeat(ADMIN, a.service_id, 7)  # a load write: not an instance change
        changes = index.changes_since(start)
        assert changes is not None
        assert [(c.type, c.instance.service_id) for c in changes] == [
            (pb.WATCH_EVENT_TYPE_ADDED, a.service_id),
            (pb.WATCH_EVENT_TYPE_ADDED, b.service_id),
        ]
        assert index.changes_since(changes[0].revision) == changes[1:]
        await registry.deregister(ADMIN, a.service_id)
        await registry.drain(ADMIN, b.service_id)  # history=3: the first change falls out
        assert index.changes_since(start) is None
        tail = index.changes_since(changes[0].revision)
        assert tail is not None and [c.type for c in tail] == [
            pb.WATCH_EVENT_TYPE_ADDED,
            pb.WATCH_EVENT_TYPE_REMOVED,
            pb.WATCH_EVENT_TYPE_UPDATED,
        ]
    finally:
        await index.stop()
        await store.close()
