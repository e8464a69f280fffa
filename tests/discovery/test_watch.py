"""Watch: snapshot, then added/updated/removed; filters; resumption; lease expiry; compaction;
store reconnects; overflow. Streams are read with timeouts, never with sleeps."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

import grpc
import pytest

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.api.lucid.discovery.v1 import discovery_pb2_grpc
from lucid_cp.app import start_control_plane
from lucid_cp.auth.tokens import Role
from lucid_cp.clock import FakeClock, SystemClock
from lucid_cp.discovery import keys
from lucid_cp.discovery.index import InstanceIndex
from lucid_cp.discovery.module import DiscoverySystem
from lucid_cp.discovery.records import encode_record
from lucid_cp.discovery.settings import DiscoverySettings
from lucid_cp.store import MemoryStore, StoreUnavailableError, WatchBatch

from .conftest import ADMIN, BASE_SETTINGS, auth, register, registration, set_health, token

SNAPSHOT, ADDED, UPDATED, REMOVED = (
    pb.WATCH_EVENT_TYPE_SNAPSHOT,
    pb.WATCH_EVENT_TYPE_ADDED,
    pb.WATCH_EVENT_TYPE_UPDATED,
    pb.WATCH_EVENT_TYPE_REMOVED,
)


async def next_event(call, timeout: float = 5.0) -> pb.WatchResponse:
    response = await asyncio.wait_for(call.read(), timeout)
    assert response is not grpc.aio.EOF, "watch ended unexpectedly"
    return response


async def test_snapshot_then_changes(stub) -> None:
    existing = registration()
    await register(stub, existing)
    call = stub.Watch(pb.WatchRequest(), metadata=ADMIN)
    snapshot = await next_event(call)
    assert snapshot.type == SNAPSHOT
    assert [i.service_id for i in snapshot.snapshot.instances] == [existing.service_id]

    added = registration("blockchain-core")
    reg_response = await register(stub, added)
    event = await next_event(call)
    assert (event.type, event.instance.service_id, event.revision) == (
        ADDED,
        added.service_id,
        reg_response.revision,
    )

    health = await set_health(stub, added.service_id, pb.HEALTH_STATE_HEALTHY)
    event = await next_event(call)
    assert event.type == UPDATED and event.instance.status == pb.HEALTH_STATE_HEALTHY
    assert event.revision == health.revision

    await stub.Deregister(pb.DeregisterRequest(service_id=existing.service_id), metadata=ADMIN)
    event = await next_event(call)
    assert event.type == REMOVED and event.instance.service_id == existing.service_id
    call.cancel()


async def test_filters_by_service_and_plane(stub) -> None:
    by_name = stub.Watch(pb.WatchRequest(service_name="tron-payment"), metadata=ADMIN)
    by_plane = stub.Watch(pb.WatchRequest(plane=pb.PLANE_WALLET), metadata=ADMIN)
    assert not (await next_event(by_name)).snapshot.instances
    assert not (await next_event(by_plane)).snapshot.instances
    await register(stub, registration("api-gateway"))
    wallet = registration("tron-payment", cluster=pb.CLUSTER_TRON_PAYMENT, plane=pb.PLANE_WALLET)
    await register(stub, wallet)
    assert (await next_event(by_name)).instance.service_id == wallet.service_id
    assert (await next_event(by_plane)).instance.service_id == wallet.service_id
    by_name.cancel()
    by_plane.cancel()


async def test_resume_from_a_revision_replays_what_was_missed(stub) -> None:
    first = await register(stub, registration())
    missed = registration("blockchain-core")
    missed_response = await register(stub, missed)
    await set_health(stub, missed.service_id, pb.HEALTH_STATE_HEALTHY)
    call = stub.Watch(pb.WatchRequest(start_revision=first.revision + 1), metadata=ADMIN)
    event = await next_event(call)
    assert (event.type, event.instance.service_id, event.revision) == (
        ADDED,
        missed.service_id,
        missed_response.revision,
    )
    assert (await next_event(call)).type == UPDATED
    call.cancel()


@pytest.mark.parametrize(
    "settings", [replace(BASE_SETTINGS, sections=(DiscoverySettings(watch_history=2),))]
)
async def test_resume_from_forgotten_history_gets_a_fresh_snapshot(stub) -> None:
    first = await register(stub, registration())
    for _ in range(3):
        await register(stub, registration())
    call = stub.Watch(pb.WatchRequest(start_revision=first.revision), metadata=ADMIN)
    snapshot = await next_event(call)
    assert snapshot.type == SNAPSHOT and len(snapshot.snapshot.instances) == 4
    call.cancel()


async def test_lease_expiry_removes_the_instance_and_tells_watchers() -> None:
    clock = FakeClock(now=1_800_000_000.0)
    store = MemoryStore(clock=clock)
    plane = await start_control_plane(BASE_SETTINGS, clock=clock, store=store)
    md = (
        ("authorization", f"Bearer {token('api-gateway', Role.SERVICE, clock=clock, ttl=10**6)}"),
    )
    try:
        async with grpc.aio.insecure_channel(plane.grpc_target) as channel:
            stub = discovery_pb2_grpc.DiscoveryServiceStub(channel)
            short, kept = registration(ttl=30), registration(ttl=120)
            await register(stub, short, md)
            await register(stub, kept, md)
            call = stub.Watch(pb.WatchRequest(), metadata=md)
            assert len((await next_event(call)).snapshot.instances) == 2
            clock.advance(20)
            await stub.Heartbeat(pb.HeartbeatRequest(service_id=kept.service_id), metadata=md)
            clock.advance(11)  # short: 31 s without a heartbeat > ttl 30
            await store.reap_expired_leases()
            event = await next_event(call)
            assert (event.type, event.instance.service_id) == (REMOVED, short.service_id)
            [left] = (await stub.Discover(pb.DiscoverRequest(), metadata=md)).services
            assert left.service_id == kept.service_id
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Heartbeat(pb.HeartbeatRequest(service_id=short.service_id), metadata=md)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            call.cancel()
    finally:
        await plane.stop(grace=0.5)


class FlakyWatchStore(MemoryStore):
    """A real memory store whose watch can be broken on demand, as a store reconnect would."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = asyncio.Event()
        self.healed = asyncio.Event()
        self.healed.set()

    async def _flaky_watch(self, prefix: bytes, start_revision: int) -> AsyncIterator[WatchBatch]:
        await self.healed.wait()
        inner = super().watch(prefix, start_revision)
        next_batch = asyncio.ensure_future(inner.__anext__())
        broken = asyncio.ensure_future(self.broken.wait())
        try:
            while True:
                done, _ = await asyncio.wait(
                    {next_batch, broken}, return_when=asyncio.FIRST_COMPLETED
                )
                if broken in done:
                    raise StoreUnavailableError("connection lost (test)")
                yield next_batch.result()
                next_batch = asyncio.ensure_future(inner.__anext__())
        finally:
            broken.cancel()
            next_batch.cancel()
            with contextlib.suppress(BaseException):
                await next_batch  # let the inner generator finish its step before closing it
            await inner.aclose()

    def watch(
        self, prefix: bytes, start_revision: int, *, prev_kv: bool = False
    ) -> AsyncIterator[WatchBatch]:
        return self._flaky_watch(prefix, start_revision)


async def test_reconnect_after_compaction_resyncs_watchers_with_a_snapshot() -> None:
    store = FlakyWatchStore()
    plane = await start_control_plane(BASE_SETTINGS, store=store)
    try:
        async with grpc.aio.insecure_channel(plane.grpc_target) as channel:
            stub = discovery_pb2_grpc.DiscoveryServiceStub(channel)
            gone, stays = registration(), registration()
            await register(stub, gone)
            await register(stub, stays)
            call = stub.Watch(pb.WatchRequest(), metadata=ADMIN)
            assert len((await next_event(call)).snapshot.instances) == 2
            resyncs = plane.system(DiscoverySystem).index.resyncs

            store.healed.clear()
            store.broken.set()  # the index's watch drops; writes meanwhile go straight to the store
            instance = plane.system(DiscoverySystem).index.get(gone.service_id)
            assert instance is not None
            await store.revoke_lease(
                plane.system(DiscoverySystem).index.lease_of(instance.service_id)
            )
            revision = await store.current_revision()
            await store.compact(revision)
            store.broken.clear()
            store.healed.set()  # reconnect: the resumed watch hits compaction -> re-list

            snapshot = await next_event(call)
            assert snapshot.type == SNAPSHOT
            assert [i.service_id for i in snapshot.snapshot.instances] == [stays.service_id]
            assert plane.system(DiscoverySystem).index.resyncs == resyncs + 1
            assert plane.system(DiscoverySystem).index.get(gone.service_id) is None
            call.cancel()
    finally:
        await plane.stop(grace=0.5)


async def test_reconnect_without_compaction_resumes_without_losing_events() -> None:
    store = FlakyWatchStore()
    plane = await start_control_plane(BASE_SETTINGS, store=store)
    try:
        async with grpc.aio.insecure_channel(plane.grpc_target) as channel:
            stub = discovery_pb2_grpc.DiscoveryServiceStub(channel)
            reg = registration()
            await register(stub, reg)
            call = stub.Watch(pb.WatchRequest(), metadata=ADMIN)
            await next_event(call)
            store.healed.clear()
            store.broken.set()
            instance = plane.system(DiscoverySystem).index.get(reg.service_id)
            assert instance is not None
            await store.revoke_lease(
                plane.system(DiscoverySystem).index.lease_of(instance.service_id)
            )
            store.broken.clear()
            store.healed.set()
            event = await next_event(call)
            assert (event.type, event.instance.service_id) == (REMOVED, reg.service_id)
            assert plane.system(DiscoverySystem).index.get(reg.service_id) is None
            call.cancel()
    finally:
        await plane.stop(grace=0.5)


async def test_a_slow_watcher_is_resynced_not_silently_skipped() -> None:
    store = MemoryStore()
    index = InstanceIndex(store, clock=SystemClock(), queue_size=3)
    await index.start()
    try:
        sub = index.subscribe(lambda _i: True)
        assert (await anext(sub)).type == SNAPSHOT
        for _ in range(5):  # more changes than the queue holds, while nobody reads
            reg = registration()
            instance = pb.ServiceInstance(service_id=reg.service_id, service_name=reg.service_name)
            revision = await store.put(
                keys.instance_key(reg.service_id), encode_record(instance, 0)
            )
            assert await index.wait_for(revision, 5)
        resync = await asyncio.wait_for(anext(sub), 5)
        assert resync.type == SNAPSHOT and len(resync.snapshot.instances) == 5
        sub.close()
        assert index.watchers == 0
    finally:
        await index.stop()
        await store.close()


async def test_cancelled_watch_releases_its_subscription(control_plane, stub) -> None:
    index = control_plane.system(DiscoverySystem).index
    internal = index.watchers  # the control plane's own subscribers (the event feed)
    call = stub.Watch(pb.WatchRequest(), metadata=auth())
    await next_event(call)
    assert index.watchers == internal + 1
    call.cancel()
    for _ in range(200):
        if index.watchers == internal:
            break
        await asyncio.sleep(0.01)
    assert index.watchers == internal


async def test_a_bad_record_in_the_store_never_stalls_the_index(control_plane, stub) -> None:
    store = control_plane.store
    await store.put(keys.instance_key("garbage"), b"\xff\xff not a protobuf")
    mismatched = pb.ServiceInstance(service_id="someone-else", service_name="api-gateway")
    await store.put(keys.instance_key("mismatch"), encode_record(mismatched, 0))
    reg = registration()
    response = await register(stub, reg)
    assert control_plane.system(DiscoverySystem).index.revision >= response.revision
    found = await stub.Discover(pb.DiscoverRequest(), metadata=ADMIN)
    assert [s.service_id for s in found.services] == [reg.service_id]


async def test_the_index_lists_a_large_registry_in_pages() -> None:
    store = MemoryStore()
    ids = sorted(registration().service_id for _ in range(7))
    for service_id in ids:
        instance = pb.ServiceInstance(service_id=service_id, service_name="api-gateway")
        await store.put(keys.instance_key(service_id), encode_record(instance, 0))
    index = InstanceIndex(store, clock=SystemClock(), list_page=3)
    await index.start()
    try:
        assert [i.service_id for i in index.ordered()] == ids
        assert index.revision == await store.current_revision()
    finally:
        await index.stop()
        await store.close()
