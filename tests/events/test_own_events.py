"""The control plane's own changes as events (source "lucid-cp"): service.registered,
service.health-changed (only when the status changes), service.deregistered at once,
service.expired after a lease expiry (fake clock, MemoryStore.reap_expired_leases), and
policy.updated for mesh writes; ids are uuid5 of (key, kind, revision)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as dpb
from lucid_cp.api.lucid.mesh.v1 import mesh_pb2 as mpb
from lucid_cp.api.lucid.mesh.v1 import mesh_pb2_grpc
from lucid_cp.api.lucid.messaging.v1 import event_storage_pb2 as spb
from lucid_cp.api.lucid.messaging.v1 import events_pb2 as pb
from lucid_cp.clock import FakeClock
from lucid_cp.events import keys
from lucid_cp.events.feed import event_id
from lucid_cp.mesh import keys as mesh_keys
from lucid_cp.store.memory import MemoryStore
from tests.discovery.conftest import auth as auth_at
from tests.discovery.conftest import registration
from tests.mesh.conftest import breaker, traffic

from .conftest import Events, open_events, subscription, until


async def own_events(events: Events) -> list[pb.ServiceEvent]:
    await events.system.publisher.drain()
    page = await events.plane.store.range(keys.LOG)
    return [
        e
        for e in (spb.StoredEvent.FromString(kv.value).event for kv in page.kvs)
        if e.source == "lucid-cp"
    ]


async def settle(events: Events, count: int) -> list[pb.ServiceEvent]:
    """Waits (real time) until the feed has appended ``count`` events."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while True:
        found = await own_events(events)
        if len(found) >= count or loop.time() > deadline:
            return found
        await asyncio.sleep(0.01)


@dataclass
class Fake:
    events: Events
    clock: FakeClock

    def md(self, subject: str = "api-gateway", admin: bool = False) -> object:
        from lucid_cp.auth.tokens import Role

        return auth_at(subject, Role.ADMIN if admin else Role.SERVICE, clock=self.clock, ttl=10**6)

    @property
    def store(self) -> MemoryStore:
        store = self.events.plane.store
        assert isinstance(store, MemoryStore)
        return store


@pytest.fixture
async def fake() -> AsyncIterator[Fake]:
    clock = FakeClock(now=1_800_000_000.0)
    async for e in open_events(clock=clock):
        yield Fake(e, clock)


async def register(fake: Fake, **kw: object) -> tuple[dpb.ServiceRegistration, int]:
    reg = registration("api-gateway", **kw)  # type: ignore[arg-type]
    answer = await fake.events.discovery.Register(
        dpb.RegisterRequest(registration=reg), metadata=fake.md()
    )
    return reg, answer.revision


async def test_registration_is_service_registered(fake: Fake) -> None:
    reg, revision = await register(fake)
    [ev] = await settle(fake.events, 1)
    assert ev.event_type == "service.registered" and ev.source == "lucid-cp"
    assert ev.event_id == event_id(reg.service_id, "registered", revision)
    assert ev.data["serviceId"] == reg.service_id
    assert ev.data["serviceName"] == "api-gateway"
    assert ev.data["status"] == "unknown"  # REST JSON: wire strings
    assert dict(ev.tags) == {"serviceName": "api-gateway", "serviceId": reg.service_id}


async def test_health_changed_only_when_the_status_changes(fake: Fake) -> None:
    reg, _ = await register(fake)

    async def report(state: int) -> int:
        answer = await fake.events.discovery.UpdateHealth(
            dpb.UpdateHealthRequest(
                service_id=reg.service_id, update=dpb.HealthUpdate(status=state)
            ),
            metadata=fake.md(admin=True),
        )
        return answer.revision

    healthy = await report(dpb.HEALTH_STATE_HEALTHY)
    await report(dpb.HEALTH_STATE_HEALTHY)  # no change of status: no event
    unhealthy = await report(dpb.HEALTH_STATE_UNHEALTHY)
    found = await settle(fake.events, 3)
    changes = [e for e in found if e.event_type == "service.health-changed"]
    assert [(e.tags["previousStatus"], e.tags["status"]) for e in changes] == [
        ("unknown", "healthy"),
        ("healthy", "unhealthy"),
    ]
    assert [e.event_id for e in changes] == [
        event_id(reg.service_id, "health", healthy),
        event_id(reg.service_id, "health", unhealthy),
    ]
    assert changes[1].data["status"] == "unhealthy"


async def test_deregistration_is_published_at_once_and_never_as_an_expiry(fake: Fake) -> None:
    reg, _ = await register(fake)
    gone = await fake.events.discovery.Deregister(
        dpb.DeregisterRequest(service_id=reg.service_id), metadata=fake.md()
    )
    found = await settle(fake.events, 2)
    assert [e.event_type for e in found] == ["service.registered", "service.deregistered"]
    assert found[1].event_id == event_id(reg.service_id, "removed", gone.revision)
    assert found[1].data["serviceId"] == reg.service_id
    # The synchronisation point: the removal's grace timer. Once it is done (it found the
    # deregistration stored, or published the expiry), whatever it queued is appended by
    # the time own_events has drained the publisher.
    feed = fake.events.system.service_feed
    assert feed.pending_expiries == 1
    fake.clock.advance(5)  # past the expiry grace: the expiry is not published
    await until(lambda: feed.pending_expiries == 0, what="the grace timer")
    assert [e.event_type for e in await own_events(fake.events)] == [
        "service.registered",
        "service.deregistered",
    ]


async def test_lease_expiry_is_service_expired_after_the_grace(fake: Fake) -> None:
    reg, _ = await register(fake, ttl=30)
    await settle(fake.events, 1)
    fake.clock.advance(31)
    assert await fake.store.reap_expired_leases() >= 1
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while fake.events.system.service_feed.pending_expiries == 0:  # the removal was seen
        assert loop.time() < deadline
        await asyncio.sleep(0.01)
    assert [e.event_type for e in await own_events(fake.events)] == ["service.registered"]
    fake.clock.advance(2.5)
    found = await settle(fake.events, 2)
    assert [e.event_type for e in found] == ["service.registered", "service.expired"]
    expired = found[1]
    assert expired.data["serviceId"] == reg.service_id
    assert expired.tags["serviceId"] == reg.service_id


async def test_mesh_writes_are_policy_updated(fake: Fake) -> None:
    async with grpc.aio.insecure_channel(fake.events.plane.grpc_target) as channel:
        mesh = mesh_pb2_grpc.MeshServiceStub(channel)
        admin = fake.md("ops-admin", admin=True)
        created = await mesh.CreateTrafficPolicy(
            mpb.CreateTrafficPolicyRequest(policy=traffic()), metadata=admin
        )
        policy = traffic(priority=7)
        replaced = await mesh.ReplaceTrafficPolicy(
            mpb.ReplaceTrafficPolicyRequest(name=policy.name, namespace="default", policy=policy),
            metadata=admin,
        )
        deleted = await mesh.DeleteTrafficPolicy(
            mpb.DeleteTrafficPolicyRequest(name=policy.name, namespace="default"), metadata=admin
        )
        await register(fake)  # a breaker needs a registered destination
        await fake.events.discovery.Register(
            dpb.RegisterRequest(registration=registration("blockchain-core")),
            metadata=fake.md("blockchain-core"),
        )
        await mesh.UpdateCircuitBreaker(
            mpb.UpdateCircuitBreakerRequest(service_name="blockchain-core", config=breaker()),
            metadata=admin,
        )
    found = [e for e in await settle(fake.events, 6) if e.event_type == "policy.updated"]
    key = mesh_keys.policy_key(mesh_keys.Kind.TRAFFIC, "default", policy.name).decode()
    assert [(e.tags["kind"], e.tags["change"]) for e in found] == [
        ("traffic", "created"),
        ("traffic", "updated"),
        ("traffic", "deleted"),
        ("circuit-breakers", "created"),
    ]
    assert [e.event_id for e in found[:3]] == [
        event_id(key, "policy", created.revision),
        event_id(key, "policy", replaced.revision),
        event_id(key, "policy", deleted.revision),
    ]
    assert found[0].data["policy"]["name"] == policy.name
    assert found[1].data["policy"]["priority"] == 7
    assert found[3].tags["name"] == "blockchain-core"


async def test_operators_can_subscribe_to_the_registry(fake: Fake) -> None:
    md = fake.md("ops-admin", admin=True)
    sub = await fake.events.subscribe(
        subscription("service.*", filters={"source": ["lucid-cp"]}), md=md
    )
    reg, _ = await register(fake)
    await settle(fake.events, 1)
    batch = await fake.events.pull(sub.subscription_id, md=md)
    [ev] = batch.events
    assert ev.event_type == "service.registered" and ev.data["serviceId"] == reg.service_id
