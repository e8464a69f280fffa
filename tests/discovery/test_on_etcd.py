"""Discovery on a real etcd: the same control plane, the production store. Includes an etcd
outage: writes fail with UNAVAILABLE, reads keep being served, and the index catches up after."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import grpc
import pytest

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.api.lucid.discovery.v1 import discovery_pb2_grpc
from lucid_cp.app import start_control_plane
from lucid_cp.discovery.module import DiscoverySystem

from .conftest import ADMIN, BASE_SETTINGS, error_info, register, registration, set_health
from .test_watch import ADDED, REMOVED, SNAPSHOT, UPDATED, next_event

pytestmark = pytest.mark.etcd


@pytest.fixture
async def etcd_plane(fresh_etcd):
    plane = await start_control_plane(replace(BASE_SETTINGS, store_url=fresh_etcd.url))
    channel = grpc.aio.insecure_channel(plane.grpc_target)
    try:
        yield fresh_etcd, plane, discovery_pb2_grpc.DiscoveryServiceStub(channel)
    finally:
        await channel.close()
        await plane.stop(grace=0.5)


async def test_register_resolve_watch_deregister_on_etcd(etcd_plane) -> None:
    _, _, stub = etcd_plane
    call = stub.Watch(pb.WatchRequest(service_name="api-gateway"), metadata=ADMIN)
    assert (await next_event(call)).type == SNAPSHOT
    reg = registration()
    await register(stub, reg)
    assert (await next_event(call)).type == ADDED
    await set_health(stub, reg.service_id, pb.HEALTH_STATE_HEALTHY)
    assert (await next_event(call)).type == UPDATED
    resolved = await stub.Resolve(pb.ResolveRequest(service_name="api-gateway"), metadata=ADMIN)
    assert resolved.service_id == reg.service_id
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await register(stub, reg)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    await stub.Deregister(pb.DeregisterRequest(service_id=reg.service_id), metadata=ADMIN)
    event = await next_event(call)
    assert (event.type, event.instance.service_id) == (REMOVED, reg.service_id)
    call.cancel()


async def test_etcd_outage_then_recovery(etcd_plane) -> None:
    etcd, plane, stub = etcd_plane
    kept = registration()
    await register(stub, kept)
    await set_health(stub, kept.service_id, pb.HEALTH_STATE_HEALTHY)
    call = stub.Watch(pb.WatchRequest(), metadata=ADMIN)
    assert (await next_event(call)).type == SNAPSHOT

    etcd.stop()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(register(stub, registration()), 30)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    info, _ = error_info(caught.value)
    assert info.reason == "LUCID_ERR_1906"
    # Reads are still served from the index during the outage.
    resolved = await stub.Resolve(pb.ResolveRequest(service_name="api-gateway"), metadata=ADMIN)
    assert resolved.service_id == kept.service_id

    etcd.start()
    added = registration()
    for _ in range(100):  # the first writes after a restart may still race the reconnect
        try:
            await register(stub, added)
            break
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                break  # an earlier attempt landed although its answer was lost in the outage
            assert exc.code() == grpc.StatusCode.UNAVAILABLE
            await asyncio.sleep(0.1)
    event = await next_event(call, timeout=30)
    assert (event.type, event.instance.service_id) == (ADDED, added.service_id)
    assert plane.system(DiscoverySystem).index.get(added.service_id) is not None
    call.cancel()


async def test_two_replicas_on_one_etcd_see_each_others_writes(fresh_etcd) -> None:
    settings = replace(BASE_SETTINGS, store_url=fresh_etcd.url)
    first, second = await start_control_plane(settings), await start_control_plane(settings)
    try:
        async with (
            grpc.aio.insecure_channel(first.grpc_target) as a,
            grpc.aio.insecure_channel(second.grpc_target) as b,
        ):
            stub_a = discovery_pb2_grpc.DiscoveryServiceStub(a)
            stub_b = discovery_pb2_grpc.DiscoveryServiceStub(b)
            watch_b = stub_b.Watch(pb.WatchRequest(), metadata=ADMIN)
            assert (await next_event(watch_b)).type == SNAPSHOT
            reg = registration()
            written = await register(stub_a, reg)
            event = await next_event(watch_b)
            assert (event.type, event.instance.service_id, event.revision) == (
                ADDED,
                reg.service_id,
                written.revision,
            )
            await set_health(stub_b, reg.service_id, pb.HEALTH_STATE_HEALTHY)
            assert (await next_event(watch_b)).type == UPDATED
            assert second.system(DiscoverySystem).index.revision >= written.revision
            resolved = await stub_b.Resolve(
                pb.ResolveRequest(service_name="api-gateway"), metadata=ADMIN
            )
            assert resolved.service_id == reg.service_id
            await stub_b.Deregister(pb.DeregisterRequest(service_id=reg.service_id), metadata=ADMIN)
            assert (await next_event(watch_b)).type == REMOVED
            for _ in range(100):  # the other replica's index catches up through its own watch
                if first.system(DiscoverySystem).index.get(reg.service_id) is None:
                    break
                await asyncio.sleep(0.02)
            assert first.system(DiscoverySystem).index.get(reg.service_id) is None
            watch_b.cancel()
    finally:
        await first.stop(grace=0.5)
        await second.stop(grace=0.5)
