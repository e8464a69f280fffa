"""Through a real gRPC channel to a real control plane: active checks visible in Discover and
Watch, Drain, Resolve with include_unhealthy, metrics, and the off switch."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.api.lucid.discovery.v1 import discovery_pb2_grpc
from lucid_cp.app import ControlPlane, start_control_plane
from lucid_cp.auth.tokens import Role, mint_token
from lucid_cp.clock import ScaledClock, SystemClock
from lucid_cp.config import Settings
from lucid_cp.discovery.module import DiscoverySystem
from lucid_cp.discovery.settings import DiscoverySettings

from .conftest import SPEED, registration
from .targets import HttpTarget, wait_until

SECRET = b"health-e2e-secret-0123456789abcdef0123"
SETTINGS = Settings(
    store_url="memory://",
    grpc_addr="127.0.0.1:0",
    jwt_secret=SECRET,
    sections=(DiscoverySettings(health_replica_id="e2e-replica"),),
)
NAME = "session-manager"


def md(subject: str = NAME, role: Role = Role.SERVICE) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {mint_token(SECRET, subject, role, SystemClock())}"),)


@pytest.fixture
async def plane() -> AsyncIterator[ControlPlane]:
    control_plane = await start_control_plane(SETTINGS, clock=ScaledClock(SPEED))
    try:
        yield control_plane
    finally:
        await control_plane.stop(grace=0.2)


@pytest.fixture
async def stub(plane: ControlPlane) -> AsyncIterator[discovery_pb2_grpc.DiscoveryServiceStub]:
    async with grpc.aio.insecure_channel(plane.grpc_target) as channel:
        yield discovery_pb2_grpc.DiscoveryServiceStub(channel)


async def register(
    stub: discovery_pb2_grpc.DiscoveryServiceStub, reg: pb.ServiceRegistration
) -> str:
    await stub.Register(pb.RegisterRequest(registration=reg), metadata=md(reg.service_name))
    return reg.service_id


async def status_of(
    stub: discovery_pb2_grpc.DiscoveryServiceStub, service_id: str
) -> pb.ServiceInstance:
    found = await stub.Discover(pb.DiscoverRequest(service_name=NAME), metadata=md())
    return next(s for s in found.services if s.service_id == service_id)


async def wait_status(
    stub: discovery_pb2_grpc.DiscoveryServiceStub, service_id: str, status: int
) -> pb.ServiceInstance:
    async def reached() -> bool:
        return (await status_of(stub, service_id)).status == status

    await wait_until(reached, 5, f"{service_id} to be {pb.HealthState.Name(status)}")  # type: ignore[arg-type]
    return await status_of(stub, service_id)


async def test_active_transitions_show_in_discover_watch_and_metrics(
    plane: ControlPlane, stub: discovery_pb2_grpc.DiscoveryServiceStub, http_target: HttpTarget
) -> None:
    watch = stub.Watch(pb.WatchRequest(service_name=NAME), metadata=md())
    events: asyncio.Queue[pb.WatchResponse] = asyncio.Queue()

    async def pump() -> None:
        async for event in watch:
            await events.put(event)

    pumping = asyncio.create_task(pump())
    try:
        assert (await asyncio.wait_for(events.get(), 5)).type == pb.WATCH_EVENT_TYPE_SNAPSHOT
        sid = await register(stub, registration(http_target.port, success_threshold=2))
        assert (await asyncio.wait_for(events.get(), 5)).type == pb.WATCH_EVENT_TYPE_ADDED
        updated = await asyncio.wait_for(events.get(), 5)
        assert updated.type == pb.WATCH_EVENT_TYPE_UPDATED
        assert updated.instance.status == pb.HEALTH_STATE_HEALTHY
        assert updated.instance.health.consecutive_successes == 2
        assert updated.instance.health.source == pb.HEALTH_SOURCE_ACTIVE
        listed = await status_of(stub, sid)
        assert listed.health == updated.instance.health
    finally:
        watch.cancel()
        pumping.cancel()
        await asyncio.gather(pumping, return_exceptions=True)

    registry = plane.metrics.registry
    assert (
        registry.get_sample_value("lucid_health_checks_total", {"kind": "http", "outcome": "pass"})
        or 0
    ) >= 2
    transitions = {"from_status": "unknown", "to_status": "healthy"}
    assert registry.get_sample_value("lucid_health_transitions_total", transitions) == 1
    assert registry.get_sample_value("lucid_health_checked_instances") == 1
    assert registry.get_sample_value("lucid_health_replicas") == 1
    assert (
        registry.get_sample_value("lucid_health_check_seconds_count", {"kind": "http"}) or 0
    ) >= 2


def _not_found_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    assert err.code() == grpc.StatusCode.NOT_FOUND
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    next(d for d in status.details if d.Is(info.DESCRIPTOR)).Unpack(info)
    return info


async def test_resolve_answers_not_found_for_unhealthy_instances_unless_asked(
    stub: discovery_pb2_grpc.DiscoveryServiceStub, http_target: HttpTarget
) -> None:
    http_target.behave("/health", status=503)
    sid = await register(stub, registration(http_target.port, failure_threshold=1))
    sick = await wait_status(stub, sid, pb.HEALTH_STATE_UNHEALTHY)
    assert sick.health.error == "HTTP 503 (expected 200)"

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Resolve(pb.ResolveRequest(service_name=NAME), metadata=md())
    info = _not_found_info(caught.value)
    assert info.metadata["registered"] == "1" and info.metadata["unhealthy"] == "1"
    assert "no healthy instance" in caught.value.details()
    assert "includeUnhealthy" in caught.value.details()

    resolved = await stub.Resolve(
        pb.ResolveRequest(service_name=NAME, include_unhealthy=True), metadata=md()
    )
    assert resolved.service_id == sid and resolved.status == pb.HEALTH_STATE_UNHEALTHY

    http_target.behave("/health")
    await wait_status(stub, sid, pb.HEALTH_STATE_HEALTHY)
    resolved = await stub.Resolve(pb.ResolveRequest(service_name=NAME), metadata=md())
    assert resolved.service_id == sid and resolved.status == pb.HEALTH_STATE_HEALTHY


async def test_resolve_prefers_healthy_then_degraded(
    stub: discovery_pb2_grpc.DiscoveryServiceStub,
) -> None:
    # .onion hosts are never actively checked, so these manual statuses stay as set.
    ids = [await register(stub, registration(443 + n, host=f"s{n}.lucid.onion")) for n in range(2)]
    healthy, degraded = ids
    for sid, state in ((healthy, pb.HEALTH_STATE_HEALTHY), (degraded, pb.HEALTH_STATE_DEGRADED)):
        update = pb.UpdateHealthRequest(service_id=sid, update=pb.HealthUpdate(status=state))
        await stub.UpdateHealth(update, metadata=md())
    picks = {
        (await stub.Resolve(pb.ResolveRequest(service_name=NAME), metadata=md())).service_id
        for _ in range(4)
    }
    assert picks == {healthy}
    await stub.Drain(pb.DrainRequest(service_id=healthy), metadata=md())
    resolved = await stub.Resolve(pb.ResolveRequest(service_name=NAME), metadata=md())
    assert resolved.service_id == degraded and resolved.status == pb.HEALTH_STATE_DEGRADED


async def test_drain_takes_an_instance_out_of_resolve_and_tells_watchers(
    stub: discovery_pb2_grpc.DiscoveryServiceStub, http_target: HttpTarget
) -> None:
    first = await register(stub, registration(http_target.port))
    second = await register(stub, registration(http_target.port))
    await wait_status(stub, first, pb.HEALTH_STATE_HEALTHY)
    await wait_status(stub, second, pb.HEALTH_STATE_HEALTHY)

    watch = stub.Watch(pb.WatchRequest(service_name=NAME), metadata=md())
    snapshot = await watch.read()
    drained = await stub.Drain(pb.DrainRequest(service_id=first), metadata=md())
    event = await asyncio.wait_for(watch.read(), 5)
    watch.cancel()
    assert event.type == pb.WATCH_EVENT_TYPE_UPDATED and event.revision == drained.revision
    assert event.instance.service_id == first and event.instance.draining
    assert drained.revision > snapshot.revision

    for _ in range(4):
        resolved = await stub.Resolve(pb.ResolveRequest(service_name=NAME), metadata=md())
        assert resolved.service_id == second
    assert (await status_of(stub, first)).draining
    again = await stub.Drain(pb.DrainRequest(service_id=first), metadata=md())
    assert again.revision == drained.revision  # idempotent: nothing written

    await stub.Drain(pb.DrainRequest(service_id=second), metadata=md())
    for include in (False, True):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Resolve(
                pb.ResolveRequest(service_name=NAME, include_unhealthy=include), metadata=md()
            )
        assert _not_found_info(caught.value).metadata["draining"] == "2"
        assert "includeUnhealthy" not in caught.value.details()  # it would not help


async def test_drain_is_limited_to_the_callers_own_service(
    stub: discovery_pb2_grpc.DiscoveryServiceStub,
) -> None:
    sid = await register(stub, registration(443, host="s.lucid.onion"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Drain(pb.DrainRequest(service_id=sid), metadata=md("api-gateway"))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Drain(pb.DrainRequest(service_id="not-a-uuid"), metadata=md())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        unknown = "00000000-0000-4000-8000-000000000000"
        await stub.Drain(pb.DrainRequest(service_id=unknown), metadata=md("admin", Role.ADMIN))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    await stub.Drain(pb.DrainRequest(service_id=sid), metadata=md("admin", Role.ADMIN))
    assert (await status_of(stub, sid)).draining


async def test_active_checks_can_be_switched_off(
    stub: discovery_pb2_grpc.DiscoveryServiceStub, http_target: HttpTarget
) -> None:
    off = replace(SETTINGS, sections=(DiscoverySettings(health_checks_enabled=False),))
    plane = await start_control_plane(off, clock=ScaledClock(SPEED))
    try:
        assert plane.system(DiscoverySystem).checker is None
        async with grpc.aio.insecure_channel(plane.grpc_target) as channel:
            unchecked = discovery_pb2_grpc.DiscoveryServiceStub(channel)
            sid = await register(unchecked, registration(http_target.port, path="/off"))
            # A witness on a plane with checks on, at the same clock speed: once it has been
            # checked three times, a checker on the other plane would have probed too.
            await register(stub, registration(http_target.port, path="/on"))
            await wait_until(lambda: len(http_target.hits("/on")) >= 3, 5, "three witness checks")
            assert http_target.hits("/off") == []
            assert (await status_of(unchecked, sid)).status == pb.HEALTH_STATE_UNKNOWN
    finally:
        await plane.stop(grace=0.2)
