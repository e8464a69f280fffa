"""The control plane's own events survive a replica that stops or dies: a deregistration is
answered only once its service.deregistered is stored (else it falls back to the expiry), and a
stop appends what the feed still had queued."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as dpb
from lucid_cp.api.lucid.messaging.v1 import event_storage_pb2 as spb
from lucid_cp.api.lucid.messaging.v1 import events_pb2 as pb
from lucid_cp.clock import FakeClock, SystemClock
from lucid_cp.discovery.keys import load_key
from lucid_cp.discovery.registry import DEREGISTERED_HOOK_TIMEOUT
from lucid_cp.events import keys
from lucid_cp.events.feed import Publisher, event_id
from lucid_cp.store.base import RequestTooLargeError, StoreUnavailableError
from lucid_cp.store.memory import MemoryStore
from tests.discovery.conftest import auth as auth_at
from tests.discovery.conftest import registration

from .conftest import Events, open_events, until


async def stored(store: MemoryStore) -> list[pb.ServiceEvent]:
    """The control plane's events in the store now (nothing waited for)."""
    page = await store.range(keys.LOG)
    events = (spb.StoredEvent.FromString(kv.value).event for kv in page.kvs)
    return [e for e in events if e.source == "lucid-cp"]


@dataclass
class Gate:
    """Wraps the log's append: events of ``held`` types wait for ``open`` (or fail with
    ``error``)."""

    append: Callable[..., Awaitable[pb.EventResponse]]
    held: set[str] = field(default_factory=set)
    error: Exception | None = None
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: int = 0

    async def __call__(self, event: pb.ServiceEvent, **kw: object) -> pb.EventResponse:
        if event.event_type in self.held:
            if self.error is not None:
                raise self.error
            self.waiting += 1
            await self.opened.wait()
        return await self.append(event, **kw)


@dataclass
class Plane:
    events: Events
    clock: FakeClock
    gate: Gate

    @property
    def store(self) -> MemoryStore:
        store = self.events.plane.store
        assert isinstance(store, MemoryStore)
        return store

    def md(self) -> object:
        return auth_at("api-gateway", clock=self.clock, ttl=10**6)

    async def register(self) -> dpb.ServiceRegistration:
        reg = registration("api-gateway")
        await self.events.discovery.Register(
            dpb.RegisterRequest(registration=reg), metadata=self.md()
        )
        await until(lambda: self.events.system.publisher.published >= 1, what="registered")
        return reg

    def deregister(self, reg: dpb.ServiceRegistration) -> asyncio.Task[dpb.DeregisterResponse]:
        call = self.events.discovery.Deregister(
            dpb.DeregisterRequest(service_id=reg.service_id), metadata=self.md()
        )
        return asyncio.ensure_future(call)


async def past_the_grace(plane: Plane) -> None:
    """Moves the clock past the expiry grace of the removal (seen: the deregistration hook
    waited for it), then waits for the synchronisation point: its grace timer is done (it
    published the expiry or found the deregistration stored) and the publisher appended
    whatever was queued."""
    feed = plane.events.system.service_feed
    plane.clock.advance(5)
    await until(lambda: feed.pending_expiries == 0, what="the grace timer")
    await asyncio.wait_for(plane.events.system.publisher.drain(), 5)


@pytest.fixture
async def plane() -> AsyncIterator[Plane]:
    clock = FakeClock(now=1_800_000_000.0)
    async for e in open_events(clock=clock):
        log = e.system.log
        gate = Gate(log.append)
        log.append = gate  # type: ignore[method-assign]
        yield Plane(e, clock, gate)
        gate.opened.set()


async def test_a_deregistration_is_answered_once_its_event_is_stored(plane: Plane) -> None:
    reg = await plane.register()
    plane.gate.held.add("service.deregistered")
    answer = plane.deregister(reg)
    await until(lambda: plane.gate.waiting == 1, what="the append of service.deregistered")
    await asyncio.sleep(0.05)
    assert not answer.done()  # not before the event is stored
    plane.gate.opened.set()
    gone = await asyncio.wait_for(answer, 5)
    found = await stored(plane.store)  # at once: no drain, no wait
    assert [e.event_type for e in found] == ["service.registered", "service.deregistered"]
    assert found[1].event_id == event_id(reg.service_id, "removed", gone.revision)


async def test_a_deregistration_event_the_store_refuses_falls_back_to_the_expiry(
    plane: Plane,
) -> None:
    reg = await plane.register()
    plane.gate.held.add("service.deregistered")
    plane.gate.error = RequestTooLargeError("refused")
    gone = await asyncio.wait_for(plane.deregister(reg), 5)
    assert [e.event_type for e in await stored(plane.store)] == ["service.registered"]
    feed = plane.events.system.service_feed
    await until(lambda: feed.pending_expiries == 1, what="the expiry timer")
    plane.clock.advance(2.5)  # past the grace
    await until(lambda: plane.events.system.publisher.published >= 2, what="the expiry")
    found = await stored(plane.store)
    assert [e.event_type for e in found] == ["service.registered", "service.expired"]
    assert found[1].event_id == event_id(reg.service_id, "removed", gone.revision)


async def test_a_hook_that_hangs_is_cut_by_the_registry_timeout(plane: Plane) -> None:
    reg = await plane.register()
    plane.gate.held.add("service.deregistered")
    answer = plane.deregister(reg)
    await until(lambda: plane.gate.waiting == 1, what="the append of service.deregistered")
    plane.clock.advance(DEREGISTERED_HOOK_TIMEOUT + 0.1)
    gone = await asyncio.wait_for(answer, 5)  # answered although nothing is stored yet
    plane.gate.opened.set()  # the queued event is still appended, once
    await until(lambda: plane.events.system.publisher.published >= 2, what="the append")
    await past_the_grace(plane)
    found = await stored(plane.store)
    assert [e.event_type for e in found] == ["service.registered", "service.deregistered"]
    assert found[1].event_id == event_id(reg.service_id, "removed", gone.revision)


# -- the publisher's stop ---------------------------------------------------------------------


async def test_a_stop_appends_what_is_still_queued() -> None:
    appended: list[str] = []
    opened = asyncio.Event()

    async def slow(event: pb.ServiceEvent) -> None:
        await opened.wait()
        appended.append(event.event_type)

    publisher = Publisher(slow, SystemClock())
    publisher.start()
    done = [publisher.publish(f"e.n{i}", "/k", "k", i, None, {}) for i in range(3)]
    await asyncio.sleep(0.01)  # the first is in flight
    stopping = asyncio.ensure_future(publisher.stop())
    await asyncio.sleep(0.01)
    opened.set()
    await asyncio.wait_for(stopping, 5)
    assert appended[-3:] == ["e.n0", "e.n1", "e.n2"]
    assert [f.result() for f in done] == [True, True, True]
    late = publisher.publish("e.late", "/k", "k", 9, None, {})
    assert late.done() and late.result() is False


async def test_a_stop_with_the_store_down_drops_the_rest_at_once() -> None:
    attempts: list[str] = []

    async def down(event: pb.ServiceEvent) -> None:
        attempts.append(event.event_type)
        raise StoreUnavailableError("down")

    clock = FakeClock()
    publisher = Publisher(down, clock)
    publisher.start()
    done = [publisher.publish(f"e.n{i}", "/k", "k", i, None, {}) for i in range(3)]
    await until(lambda: clock.sleepers == 1, what="the retry backoff")
    await asyncio.wait_for(publisher.stop(), 5)
    assert attempts == ["e.n0", "e.n0"]  # one more try at the stop, then the store is down
    assert [f.result() for f in done] == [False, False, False]
    assert publisher.dropped == 3


# -- the removal's own revision -----------------------------------------------------------------


async def test_a_later_revision_from_the_revoke_still_gives_one_removal_event(
    plane: Plane,
) -> None:
    """After an attempt whose outcome was unknown, etcd's revoke answers the current revision,
    not the removal's: the event still takes the removal's revision, the id every replica's
    expiry uses, so the removal is one event."""
    reg = await plane.register()
    store = plane.store
    revoke = store.revoke_lease
    removals: list[int] = []

    async def revoke_then_later(lease_id: int) -> int:
        removals.append(await revoke(lease_id))
        # Another write lands before the answer (a load counter: no instance change).
        return await store.put(load_key(str(uuid.uuid4())), b"1")

    store.revoke_lease = revoke_then_later  # type: ignore[method-assign]
    gone = await asyncio.wait_for(plane.deregister(reg), 5)
    [removed] = removals
    assert gone.revision > removed
    await past_the_grace(plane)  # the expiry is not published
    found = await stored(plane.store)
    assert [e.event_type for e in found] == ["service.registered", "service.deregistered"]
    assert found[1].event_id == event_id(reg.service_id, "removed", removed)


async def test_the_deregistration_matches_its_own_removal_not_an_earlier_one(
    plane: Plane,
) -> None:
    """The same serviceId expired (its expiry still in the grace), registered again and
    deregistered: the deregistration is the second removal, the expiry stays the first."""
    reg = registration("api-gateway", ttl=30)
    md = plane.md()
    await plane.events.discovery.Register(dpb.RegisterRequest(registration=reg), metadata=md)
    feed = plane.events.system.service_feed
    plane.clock.advance(31)
    assert await plane.store.reap_expired_leases() >= 1
    await until(lambda: feed.pending_expiries == 1, what="the expiry seen")
    await plane.events.discovery.Register(dpb.RegisterRequest(registration=reg), metadata=md)
    gone = await asyncio.wait_for(plane.deregister(reg), 5)
    plane.clock.advance(5)
    await until(lambda: plane.events.system.publisher.published >= 4, what="four events")
    found = await stored(plane.store)
    removals = {e.event_type: e.event_id for e in found if e.event_type != "service.registered"}
    assert removals["service.deregistered"] == event_id(reg.service_id, "removed", gone.revision)
    assert removals["service.expired"] != removals["service.deregistered"]
    assert len(found) == 4
