"""The Connect distribution stream end to end on a real server (127.0.0.1:0, memory store):
snapshots on connect and after each change that affects a sidecar (only those), ACK/NACK
receipts in rollout status, the refusals, reconnection by version, and the stream's end."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as dpb
from lucid_cp.api.lucid.mesh.v1 import mesh_pb2 as mpb
from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2 as pb
from lucid_cp.sidecar.module import SidecarSystem
from tests.discovery.conftest import auth
from tests.mesh.conftest import traffic
from tests.sidecar.conftest import ADMIN, Sidecars, config
from tests.sidecar.fake_sidecar import FakeSidecar

Healthy = dpb.HealthUpdate(status=dpb.HEALTH_STATE_HEALTHY)


async def healthy(sc: Sidecars, name: str) -> str:
    sid = await sc.register(name)
    await sc.discovery.UpdateHealth(
        dpb.UpdateHealthRequest(service_id=sid, update=Healthy), metadata=auth(name)
    )
    return sid


async def rollout(sc: Sidecars, **kw: Any) -> pb.RolloutStatus:
    return await sc.sidecar.GetRollout(pb.GetRolloutRequest(**kw), metadata=ADMIN)  # type: ignore[no-any-return]


async def until(check: Any, timeout: float = 5.0) -> Any:
    """Polls the async ``check`` until it returns something truthy."""
    async with asyncio.timeout(timeout):
        while not (found := await check()):  # noqa: ASYNC110 (state another task writes)
            await asyncio.sleep(0.02)
    return found


async def test_snapshot_on_connect_carries_config_policies_and_endpoints(sc: Sidecars) -> None:
    core = await healthy(sc, "blockchain-core")
    sid = await sc.register("api-gateway")
    await sc.configure(config(sid))
    await sc.mesh.CreateTrafficPolicy(
        mpb.CreateTrafficPolicyRequest(policy=traffic(source="api-gateway")), metadata=ADMIN
    )
    side = FakeSidecar(sc.sidecar, sid, auth("api-gateway"))
    try:
        first = await side.wait(1)
        assert first.version > 0 and first.nonce
        assert first.workload.name == "api-gateway"
        assert first.configuration.service_id == sid
        assert [p.name for p in first.traffic_policies] == [traffic().name]
        (dest,) = [d for d in first.destinations if d.service == "blockchain-core"]
        assert [e.service_id for e in dest.endpoints] == [core]
        effective = await sc.sidecar.GetEffectiveConfig(
            pb.GetEffectiveConfigRequest(service_id=sid), metadata=auth("api-gateway")
        )
        assert effective.destinations == first.destinations
        assert effective.traffic_policies == first.traffic_policies
    finally:
        await side.close()


async def test_two_sidecars_get_each_change_and_rollout_counts_ack_and_nack(sc: Sidecars) -> None:
    await healthy(sc, "blockchain-core")
    core2 = await healthy(sc, "blockchain-core")
    a, b = await sc.register("api-gateway"), await sc.register("api-gateway")
    other = await sc.register("ledger-svc")
    for sid in (a, b):
        await sc.configure(config(sid))
    good = FakeSidecar(sc.sidecar, a, auth("api-gateway"))
    bad = FakeSidecar(sc.sidecar, b, auth("api-gateway"))
    bystander = FakeSidecar(sc.sidecar, other, auth("ledger-svc"))
    try:
        await good.wait(1), await bad.wait(1), await bystander.wait(1)
        bad.nack_with = "route table rejected: unknown filter"
        written = await sc.mesh.CreateTrafficPolicy(
            mpb.CreateTrafficPolicyRequest(policy=traffic(source="api-gateway")), metadata=ADMIN
        )
        n = written.revision
        assert (await good.wait(2)).version >= n
        assert (await bad.wait(2)).version >= n

        async def settled() -> pb.RolloutStatus | None:
            status = await rollout(sc, revision=n)
            return status if status.applied == 2 and status.nacked == 1 else None

        status = await until(settled)
        assert status.connected == 3  # the bystander is current: the change never affected it
        (stale,) = status.stale
        assert stale.service_id == b and stale.nack.error.startswith("route table rejected")
        assert stale.applied_version < n
        assert status.ack_p99_ms >= status.ack_p50_ms > 0

        # An endpoint of their destination goes: both get it, the bystander nothing.
        await sc.discovery.Deregister(
            dpb.DeregisterRequest(service_id=core2), metadata=auth("blockchain-core")
        )
        third = await good.wait(3)
        (dest,) = [d for d in third.destinations if d.service == "blockchain-core"]
        assert core2 not in [e.service_id for e in dest.endpoints] and dest.endpoints
        await bad.wait(3)
        # The marker: a policy selecting only the bystander, written after the deregistration.
        # The distributor evaluates the store in order, so the bystander's next snapshot must
        # be the one the marker caused: nothing came for the endpoint change before it.
        marker = await sc.mesh.CreateTrafficPolicy(
            mpb.CreateTrafficPolicyRequest(
                policy=traffic(name="ledger-marker", source="ledger-svc", destination="ledger-db")
            ),
            metadata=ADMIN,
        )
        second = await bystander.wait(2)
        assert second.version >= marker.revision
        assert [p.name for p in second.traffic_policies] == ["ledger-marker"]
        assert [d.service for d in second.destinations] == ["ledger-db"]
        listed = await sc.sidecar.ListSidecars(pb.ListSidecarsRequest(), metadata=ADMIN)
        assert listed.total == 3
        rows = {r.service_id: r for r in listed.sidecars}
        assert rows[b].last_nack.error and rows[b].applied_version < rows[b].latest_version
    finally:
        for side in (good, bad, bystander):
            await side.close()


async def test_refusals(sc: Sidecars) -> None:
    sid = await sc.register("api-gateway")
    for md, code in (
        (auth("ledger-svc"), grpc.StatusCode.PERMISSION_DENIED),
        (ADMIN, grpc.StatusCode.PERMISSION_DENIED),  # a sidecar acts as its own service
    ):
        side = FakeSidecar(sc.sidecar, sid, md)
        error = await side.ended()
        assert error is not None and error.code() == code
    side = FakeSidecar(sc.sidecar, "7d1f0000-0000-4000-8000-000000000000", auth("api-gateway"))
    error = await side.ended()
    assert error is not None and error.code() == grpc.StatusCode.NOT_FOUND
    call = sc.sidecar.Connect(
        iter([pb.ConnectRequest(ack=pb.Ack(version=1, nonce="x"))]), metadata=auth("api-gateway")
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_reconnect_gets_a_snapshot_only_when_stale(sc: Sidecars) -> None:
    sid = await sc.register("api-gateway")
    await sc.configure(config(sid))
    first = FakeSidecar(sc.sidecar, sid, auth("api-gateway"))
    version = (await first.wait(1)).version

    async def acked() -> bool:
        return (await rollout(sc, revision=version)).applied == 1

    await until(acked)
    distributor = sc.plane.system(SidecarSystem).distributor
    old = distributor.sessions[sid]
    await first.close()
    pushed, unchanged = distributor.pushes, distributor.skipped
    again = FakeSidecar(sc.sidecar, sid, auth("api-gateway"), version=version)

    # The synchronisation point: the new session is registered once its hello was evaluated
    # (and whatever that queued was taken by its stream in the same step).
    async def opened() -> bool:
        return distributor.sessions.get(sid) not in (None, old)

    await until(opened)
    # Counted as unchanged (lucid_sidecar_snapshots_unchanged), not pushed.
    assert (distributor.pushes, distributor.skipped) == (pushed, unchanged + 1)
    # The marker: a change for this sidecar written after its hello was evaluated. Its
    # snapshot must be the first the stream carries: nothing was sent on connecting.
    marker = await sc.mesh.CreateTrafficPolicy(
        mpb.CreateTrafficPolicyRequest(policy=traffic(source="api-gateway")), metadata=ADMIN
    )
    first_sent = await again.wait(1)
    assert first_sent.version >= marker.revision
    assert [p.name for p in first_sent.traffic_policies] == [traffic().name]
    assert not again.task.done()
    await again.close()
    stale = FakeSidecar(sc.sidecar, sid, auth("api-gateway"), version=version - 1)
    assert (await stale.wait(1)).version >= version
    await stale.close()


async def test_a_newer_stream_replaces_the_older_and_deregistration_ends_it(sc: Sidecars) -> None:
    sid = await sc.register("api-gateway")
    old = FakeSidecar(sc.sidecar, sid, auth("api-gateway"))
    await old.wait(1)
    new = FakeSidecar(sc.sidecar, sid, auth("api-gateway"))
    await new.wait(1)
    error = await old.ended()
    assert error is not None and error.code() == grpc.StatusCode.ABORTED
    await sc.discovery.Deregister(
        dpb.DeregisterRequest(service_id=sid), metadata=auth("api-gateway")
    )
    error = await new.ended()
    assert error is not None and error.code() == grpc.StatusCode.NOT_FOUND


async def test_health_conditions(sc: Sidecars) -> None:
    sid = await sc.register("api-gateway")
    md = auth("api-gateway")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sc.sidecar.GetSidecarHealth(pb.GetSidecarHealthRequest(service_id=sid), metadata=md)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    side = FakeSidecar(sc.sidecar, sid, md)
    try:
        await side.wait(1)

        async def health() -> pb.SidecarHealth | None:
            try:
                return await sc.sidecar.GetSidecarHealth(  # type: ignore[no-any-return]
                    pb.GetSidecarHealthRequest(), metadata=md
                )
            except grpc.aio.AioRpcError as exc:  # its session record is not written yet
                assert exc.code() == grpc.StatusCode.NOT_FOUND
                return None

        async def only_self() -> pb.SidecarHealth | None:
            h = await health()
            return h if h and list(h.failed) == [pb.HEALTH_CONDITION_SELF_HEALTHY] else None

        await until(only_self)  # connected and current, no report yet
        report = pb.MetricsReport(healthy=True, requests=0)
        report.window_start.FromSeconds(int(time.time()) - 10)
        report.window_end.FromSeconds(int(time.time()))
        side.send(pb.ConnectRequest(report=report))

        async def ok() -> pb.SidecarHealth | None:
            h = await health()
            return h if h and h.healthy else None

        found = await until(ok)
        assert found.sidecars[0].service_id == sid and found.sidecars[0].connected
    finally:
        await side.close()


async def test_shutdown_ends_connect_streams_with_unavailable() -> None:
    """A stopping replica ends its Connect streams at once (UNAVAILABLE: reconnect elsewhere)
    instead of holding them for the whole grace period."""
    from tests.sidecar.conftest import open_sidecars

    async for sc in open_sidecars():
        sid = await sc.register("api-gateway")
        side = FakeSidecar(sc.sidecar, sid, auth("api-gateway"))
        await side.wait(1)
        started = time.monotonic()
        await sc.plane.stop(grace=10.0)
        assert time.monotonic() - started < 5.0
        error = await side.ended()
        assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
        await side.close()
