"""The service feed's checkpoint (sqlite, restarts): a replica that starts reports what changed
while no replica was publishing, from the checkpoint of what was stored before; the checkpoint
follows the stored events, never the watch, so an event lost at a stop is reported at the next
start; replicas share it without going back in time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as dpb
from lucid_cp.api.lucid.messaging.v1 import event_storage_pb2 as spb
from lucid_cp.api.lucid.messaging.v1 import events_pb2 as pb
from lucid_cp.clock import SystemClock
from lucid_cp.config import Settings
from lucid_cp.events import keys
from lucid_cp.events.checkpoint import Checkpoint
from lucid_cp.events.feed import event_id
from lucid_cp.store.base import StoreUnavailableError
from lucid_cp.store.memory import MemoryStore
from tests.discovery.conftest import registration

from .conftest import Events, auth, open_events, until, with_events


def _settings(tmp_path: Path, **over: object) -> Settings:
    return replace(with_events(**over), store_url=f"sqlite:///{tmp_path}/state.db")


async def own(events: Events) -> list[pb.ServiceEvent]:
    page = await events.plane.store.range(keys.LOG)
    stored = (spb.StoredEvent.FromString(kv.value).event for kv in page.kvs)
    return [e for e in stored if e.source == "lucid-cp"]


async def checkpointed(events: Events) -> set[str] | None:
    kv = await events.plane.store.get(keys.FEED_CHECKPOINT)
    if kv is None:
        return None
    return {i.service_id for i in spb.FeedCheckpoint.FromString(kv.value).instances}


async def checkpoint_is(events: Events, wanted: set[str]) -> None:
    """Waits (real time) until the stored checkpoint lists exactly ``wanted``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while await checkpointed(events) != wanted:
        assert loop.time() < deadline, await checkpointed(events)
        await asyncio.sleep(0.01)


async def published(events: Events, count: int, what: str) -> None:
    publisher = events.system.publisher
    await until(lambda: publisher.published == count, what=what)


def _synced(events: Events) -> Callable[[], bool]:
    feed = events.system.service_feed
    return lambda: feed.synced


def _retrying(events: Events) -> Callable[[], bool]:
    publisher = events.system.publisher
    return lambda: publisher.pending == 1


async def register(events: Events, reg: dpb.ServiceRegistration) -> None:
    await events.discovery.Register(
        dpb.RegisterRequest(registration=reg), metadata=auth(reg.service_name)
    )


async def test_changes_while_no_replica_published_are_reported_at_the_start(
    tmp_path: Path,
) -> None:
    kept, dropped, added = (registration("api-gateway") for _ in range(3))
    async for ev in open_events(_settings(tmp_path)):
        await register(ev, kept)
        await register(ev, dropped)
        await published(ev, 2, "two registrations")
    # The replica is down: changes happen that no feed sees (a control plane without one).
    async for ev in open_events(_settings(tmp_path, own_events=False)):
        await ev.discovery.Deregister(
            dpb.DeregisterRequest(service_id=dropped.service_id), metadata=auth("api-gateway")
        )
        await register(ev, added)
    async for ev in open_events(_settings(tmp_path)):
        await published(ev, 2, "the start's report")
        found = await own(ev)
        assert [e.event_type for e in found[2:]] == ["service.registered", "service.expired"]
        registered, expired = found[2:]
        assert registered.tags["serviceId"] == added.service_id
        assert dict(expired.tags) == {"serviceName": "api-gateway", "serviceId": dropped.service_id}
        assert dict(expired.data) == dict(expired.tags)
        assert registered.event_id == event_id(
            added.service_id, "registered", int(registered.data["revision"])
        )
        await checkpoint_is(ev, {kept.service_id, added.service_id})
    async for ev in open_events(_settings(tmp_path)):  # nothing changed: nothing reported
        await until(_synced(ev), what="the feed's first snapshot")
        await ev.system.publisher.drain()
        assert ev.system.publisher.published == 0
        assert len(await own(ev)) == 4


async def test_the_first_start_reports_nothing_and_writes_a_checkpoint(tmp_path: Path) -> None:
    reg = registration("api-gateway")
    async for ev in open_events(_settings(tmp_path, own_events=False)):
        await register(ev, reg)
    async for ev in open_events(_settings(tmp_path)):
        await checkpoint_is(ev, {reg.service_id})
        assert await own(ev) == []


async def test_an_event_lost_at_the_stop_is_reported_at_the_next_start(tmp_path: Path) -> None:
    first, lost = registration("api-gateway"), registration("api-gateway")
    async for ev in open_events(_settings(tmp_path)):
        await register(ev, first)
        await published(ev, 1, "the first registration")

        async def down(event: pb.ServiceEvent, **kw: object) -> pb.EventResponse:
            raise StoreUnavailableError("down")

        ev.system.log.append = down  # type: ignore[method-assign]
        await register(ev, lost)
        await until(_retrying(ev), what="the append retried")
        # The stop tries it once more, in vain: the checkpoint does not list it.
    async for ev in open_events(_settings(tmp_path)):
        await published(ev, 1, "the start's report")
        [_, again] = await own(ev)
        assert again.event_type == "service.registered"
        assert again.tags["serviceId"] == lost.service_id


# -- the checkpoint on its own ------------------------------------------------------------------


async def test_a_checkpoint_never_replaces_a_newer_one() -> None:
    store = MemoryStore()
    a, b = Checkpoint(store, SystemClock()), Checkpoint(store, SystemClock())
    try:
        await a.start()
        await b.start()
        a.registered("s-1", "api-gateway", 10)
        b.registered("s-2", "api-gateway", 12)
        await b.stop()  # writes revision 12
        await a.stop()  # revision 10 is older: left
        kv = await store.get(keys.FEED_CHECKPOINT)
        assert kv is not None
        stored = spb.FeedCheckpoint.FromString(kv.value)
        assert stored.revision == 12
        assert [i.service_id for i in stored.instances] == ["s-2"]
    finally:
        await store.close()


async def test_a_checkpoint_over_its_size_is_an_overflow_a_start_ignores() -> None:
    store = MemoryStore()
    try:
        big = Checkpoint(store, SystemClock(), max_bytes=200)
        await big.start()
        for i in range(10):
            big.registered(f"s-{i}", "api-gateway", i + 1)
        await big.stop()
        kv = await store.get(keys.FEED_CHECKPOINT)
        assert kv is not None and spb.FeedCheckpoint.FromString(kv.value).overflow
        again = Checkpoint(store, SystemClock())
        await again.start()
        assert again.loaded is None
        await again.stop()
    finally:
        await store.close()
