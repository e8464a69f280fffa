"""Server plumbing: reflection, metrics, internal errors, store outages, graceful shutdown."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import generate_latest

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.api.lucid.discovery.v1 import discovery_pb2_grpc
from lucid_cp.app import start_control_plane
from lucid_cp.discovery.module import DiscoverySystem
from lucid_cp.store import MemoryStore, StoreUnavailableError

from .conftest import ADMIN, BASE_SETTINGS, error_info, register, registration


async def test_reflection_lists_the_services(channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def requests():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for response in stub.ServerReflectionInfo(requests()):
        names = {s.name for s in response.list_services_response.service}
        assert {"lucid.discovery.v1.DiscoveryService", "grpc.health.v1.Health"} <= names
        break


async def test_metrics_count_requests_by_method_and_code(control_plane, stub) -> None:
    await register(stub, registration())
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Resolve(pb.ResolveRequest(service_name="api-gateway"), metadata=ADMIN)
    text = generate_latest(control_plane.metrics.registry).decode()
    assert (
        'lucid_grpc_requests_total{code="OK",method="/lucid.discovery.v1.DiscoveryService/Register"} 1.0'
        in text
    )
    assert (
        'lucid_grpc_requests_total{code="NOT_FOUND",method="/lucid.discovery.v1.DiscoveryService/Resolve"} 1.0'
        in text
    )
    assert "lucid_discovery_instances 1.0" in text
    assert (
        f"lucid_store_revision {float(control_plane.system(DiscoverySystem).index.revision)}"
        in text
    )


class BreakableStore(MemoryStore):
    """A real memory store whose reads/writes can be made to fail as an outage or a bug would."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_with: Exception | None = None

    async def grant_lease(self, ttl: int):  # type: ignore[no-untyped-def]
        if self.fail_with is not None:
            raise self.fail_with
        return await super().grant_lease(ttl)

    async def get(self, key: bytes):  # type: ignore[no-untyped-def]
        if self.fail_with is not None:
            raise self.fail_with
        return await super().get(key)


@pytest.fixture
async def breakable():
    store = BreakableStore()
    plane = await start_control_plane(BASE_SETTINGS, store=store)
    channel = grpc.aio.insecure_channel(plane.grpc_target)
    try:
        yield store, discovery_pb2_grpc.DiscoveryServiceStub(channel)
    finally:
        await channel.close()
        await plane.stop(grace=0.5)


async def test_store_outage_is_unavailable_with_retry_info_and_reads_keep_working(
    breakable,
) -> None:
    store, stub = breakable
    kept = registration()
    await register(stub, kept)
    store.fail_with = StoreUnavailableError("etcd: connection refused")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await register(stub, registration())
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    info, status = error_info(caught.value)
    assert info.reason == "LUCID_ERR_1906"
    assert any(d.type_url.endswith("google.rpc.RetryInfo") for d in status.details)
    # Reads are served from the index during the outage.
    assert (await stub.Discover(pb.DiscoverRequest(), metadata=ADMIN)).total == 1
    store.fail_with = None
    await register(stub, registration())


async def test_unexpected_errors_are_internal_without_internals(breakable, caplog) -> None:
    store, stub = breakable
    store.fail_with = RuntimeError("secret internal detail")
    rid = "7d3f1c2e-1111-4a4a-9b9b-0123456789ab"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Deregister(
            pb.DeregisterRequest(service_id="550e8400-e29b-41d4-a716-446655440000"),
            metadata=(*ADMIN, ("x-request-id", rid)),
        )
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in caught.value.details() and rid in caught.value.details()
    info, _ = error_info(caught.value)
    assert info.reason == "LUCID_ERR_1999" and info.metadata["request_id"] == rid
    assert any(getattr(r, "request_id", None) == rid for r in caplog.records)


async def test_graceful_shutdown_reports_not_serving_and_ends_streams() -> None:
    plane = await start_control_plane(BASE_SETTINGS)
    async with grpc.aio.insecure_channel(plane.grpc_target) as channel:
        stub = discovery_pb2_grpc.DiscoveryServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        first = await asyncio.wait_for(watch.read(), 5)
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        discovery_watch = stub.Watch(pb.WatchRequest(), metadata=ADMIN)
        await asyncio.wait_for(discovery_watch.read(), 5)
        stopping = asyncio.create_task(plane.stop(grace=1.0))
        update = await asyncio.wait_for(watch.read(), 5)
        assert update.status == health_pb2.HealthCheckResponse.NOT_SERVING
        await asyncio.wait_for(stopping, 10)
        # The open Watch is ended by the shutdown (an error or a clean end), not left hanging.
        try:
            ended = await asyncio.wait_for(discovery_watch.read(), 5)
            assert ended is grpc.aio.EOF
        except grpc.aio.AioRpcError as exc:
            assert exc.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)


async def test_debug_access_log_carries_the_request_id(stub, caplog) -> None:
    rid = "5a1f0c3e-2222-4b4b-8c8c-0123456789ab"
    with caplog.at_level("DEBUG", logger="lucid_cp.rpc"):
        await stub.Discover(pb.DiscoverRequest(), metadata=(*ADMIN, ("x-request-id", rid)))
    [line] = [r for r in caplog.records if r.getMessage() == "rpc"]
    assert (line.request_id, line.code, line.method) == (
        rid,
        "OK",
        "/lucid.discovery.v1.DiscoveryService/Discover",
    )


async def test_index_health_metrics_are_fed(control_plane, stub) -> None:
    await stub.Discover(pb.DiscoverRequest(), metadata=ADMIN)
    text = generate_latest(control_plane.metrics.registry).decode()
    assert "lucid_discovery_watch_connected 1.0" in text
    assert (
        f"lucid_discovery_index_resyncs_total {float(control_plane.system(DiscoverySystem).index.resyncs)}"
        in text
    )
    assert control_plane.system(DiscoverySystem).index.resyncs == 1  # the initial list
    assert "lucid_discovery_read_your_writes_timeouts_total 0.0" in text
    control_plane.system(DiscoverySystem).index.read_your_writes_timeouts += 1
    text = generate_latest(control_plane.metrics.registry).decode()
    assert "lucid_discovery_read_your_writes_timeouts_total 1.0" in text
