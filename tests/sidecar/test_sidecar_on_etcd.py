"""Sidecar configuration on a real etcd with two replicas: a configuration written through
replica A is read through B; a policy update through B rewrites the configurations A wrote;
deregistration through A removes the configuration from B's index (the lease binding)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Protocol

import grpc
import pytest

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as dpb
from lucid_cp.api.lucid.discovery.v1 import discovery_pb2_grpc
from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2 as pb
from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2_grpc
from lucid_cp.app import start_control_plane
from lucid_cp.discovery.module import DiscoverySystem
from lucid_cp.sidecar.module import SidecarSystem
from tests.discovery.conftest import registration

from .conftest import SETTINGS, auth, config, policy, rpc_error
from .test_sidecar_grpc import parsed_policy

pytestmark = pytest.mark.etcd
GW = auth("api-gateway")


class Indexed(Protocol):
    async def wait_for(self, revision: int, timeout: float) -> bool: ...


async def _until_applied(index: Indexed, revision: int) -> None:
    assert await index.wait_for(revision, 5.0), f"the replica never applied revision {revision}"


async def test_two_replicas_share_sidecar_configurations(fresh_etcd) -> None:
    settings = replace(SETTINGS, store_url=fresh_etcd.url)
    first, second = await start_control_plane(settings), await start_control_plane(settings)
    try:
        async with (
            grpc.aio.insecure_channel(first.grpc_target) as a,
            grpc.aio.insecure_channel(second.grpc_target) as b,
        ):
            disc_a = discovery_pb2_grpc.DiscoveryServiceStub(a)
            stub_a = sidecar_pb2_grpc.SidecarServiceStub(a)
            stub_b = sidecar_pb2_grpc.SidecarServiceStub(b)
            ids = []
            for _ in range(2):
                reg = registration("api-gateway")
                await disc_a.Register(dpb.RegisterRequest(registration=reg), metadata=GW)
                ids.append(reg.service_id)
            written = []
            for sid in ids:
                written.append(
                    await stub_a.ConfigureSidecar(
                        pb.ConfigureSidecarRequest(configuration=config(sid, policies=[policy()])),
                        metadata=GW,
                    )
                )
            index_b = second.system(SidecarSystem).index
            await _until_applied(index_b, written[-1].revision)
            got = await stub_b.GetSidecarConfig(
                pb.GetSidecarConfigRequest(service_id=ids[0]), metadata=GW
            )
            assert got.configuration == written[0].configuration

            # B sees both configurations A wrote and updates them in one txn.
            updated = await stub_b.UpdateSidecarPolicy(
                pb.UpdateSidecarPolicyRequest(
                    policy_id="rate-limit-api", policy=parsed_policy(requests=3)
                ),
                metadata=GW,
            )
            assert sorted(updated.service_ids) == sorted(ids)
            index_a = first.system(SidecarSystem).index
            await _until_applied(index_a, updated.revision)
            read = await stub_a.GetSidecarPolicy(
                pb.GetSidecarPolicyRequest(policy_id="rate-limit-api"), metadata=GW
            )
            assert read.revision == updated.revision and read.policy == updated.policy

            # Deregistration through A removes the configuration everywhere (its lease).
            gone = await disc_a.Deregister(dpb.DeregisterRequest(service_id=ids[0]), metadata=GW)
            await _until_applied(index_b, gone.revision)
            code, _, _ = await rpc_error(
                stub_b.GetSidecarConfig(pb.GetSidecarConfigRequest(service_id=ids[0]), metadata=GW)
            )
            assert code == grpc.StatusCode.NOT_FOUND
            # B's discovery index knows it is gone too: configuring it again is 404.
            discovery_b = second.system(DiscoverySystem).index
            await _until_applied(discovery_b, gone.revision)
            code, reason, _ = await rpc_error(
                stub_b.ConfigureSidecar(
                    pb.ConfigureSidecarRequest(configuration=config(ids[0])), metadata=GW
                )
            )
            assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "LUCID_ERR_1002")
    finally:
        await first.stop(grace=0.5)
        await second.stop(grace=0.5)


async def test_pushes_and_rollout_across_two_replicas(fresh_etcd) -> None:
    """A sidecar on replica A gets a policy written through B and an endpoint change made
    through B; rollout status on either replica counts the sidecars connected to both."""
    from lucid_cp.api.lucid.mesh.v1 import mesh_pb2 as mpb
    from lucid_cp.api.lucid.mesh.v1 import mesh_pb2_grpc
    from tests.mesh.conftest import traffic

    from .conftest import ADMIN
    from .fake_sidecar import FakeSidecar
    from .test_connect import until

    settings = replace(SETTINGS, store_url=fresh_etcd.url)
    first, second = await start_control_plane(settings), await start_control_plane(settings)
    sides: list[FakeSidecar] = []
    try:
        async with (
            grpc.aio.insecure_channel(first.grpc_target) as a,
            grpc.aio.insecure_channel(second.grpc_target) as b,
        ):
            disc_b = discovery_pb2_grpc.DiscoveryServiceStub(b)
            stubs = (sidecar_pb2_grpc.SidecarServiceStub(a), sidecar_pb2_grpc.SidecarServiceStub(b))
            core = []
            for _ in range(2):
                reg = registration("blockchain-core")
                md = auth("blockchain-core")
                await disc_b.Register(dpb.RegisterRequest(registration=reg), metadata=md)
                up = dpb.HealthUpdate(status=dpb.HEALTH_STATE_HEALTHY)
                await disc_b.UpdateHealth(
                    dpb.UpdateHealthRequest(service_id=reg.service_id, update=up), metadata=md
                )
                core.append(reg.service_id)
            gws = []
            for stub in stubs:  # one sidecar on each replica
                reg = registration("api-gateway")
                await disc_b.Register(dpb.RegisterRequest(registration=reg), metadata=GW)
                written = await stubs[1].ConfigureSidecar(
                    pb.ConfigureSidecarRequest(configuration=config(reg.service_id)), metadata=GW
                )
                await _until_applied(first.system(SidecarSystem).index, written.revision)
                gws.append(reg.service_id)
                sides.append(FakeSidecar(stub, reg.service_id, GW))
            for side in sides:
                first_snapshot = await side.wait(1)
                (dest,) = first_snapshot.destinations
                assert sorted(e.service_id for e in dest.endpoints) == sorted(core)

            created = await mesh_pb2_grpc.MeshServiceStub(b).CreateTrafficPolicy(
                mpb.CreateTrafficPolicyRequest(policy=traffic(source="api-gateway")),
                metadata=ADMIN,
            )
            for side in sides:
                assert (await side.wait(2)).version >= created.revision

            for stub in stubs:

                async def applied(stub: sidecar_pb2_grpc.SidecarServiceStub = stub) -> bool:
                    status = await stub.GetRollout(
                        pb.GetRolloutRequest(revision=created.revision), metadata=ADMIN
                    )
                    return (
                        status.connected == 2 and status.applied == 2 and len(status.replicas) == 2
                    )

                await until(applied)

            await disc_b.Deregister(
                dpb.DeregisterRequest(service_id=core[1]), metadata=auth("blockchain-core")
            )
            for side in sides:
                (dest,) = (await side.wait(3)).destinations
                assert [e.service_id for e in dest.endpoints] == [core[0]]
            listed = await stubs[0].ListSidecars(pb.ListSidecarsRequest(), metadata=ADMIN)
            assert sorted(r.service_id for r in listed.sidecars) == sorted(gws)
            assert len({r.replica for r in listed.sidecars}) == 2
    finally:
        for side in sides:
            await side.close()
        await first.stop(grace=0.5)
        await second.stop(grace=0.5)


async def test_a_store_outage_pauses_pushes_and_they_resume(fresh_etcd) -> None:
    """etcd goes away with a sidecar connected: its stream stays open; once etcd is back, the
    next change reaches it (the distributor's watch resumed after its last evaluated revision)."""
    from lucid_cp.api.lucid.mesh.v1 import mesh_pb2 as mpb
    from lucid_cp.api.lucid.mesh.v1 import mesh_pb2_grpc
    from tests.mesh.conftest import traffic

    from .conftest import ADMIN
    from .fake_sidecar import FakeSidecar

    plane = await start_control_plane(replace(SETTINGS, store_url=fresh_etcd.url))
    side = None
    try:
        async with grpc.aio.insecure_channel(plane.grpc_target) as channel:
            disc = discovery_pb2_grpc.DiscoveryServiceStub(channel)
            reg = registration("api-gateway", ttl=120)
            await disc.Register(dpb.RegisterRequest(registration=reg), metadata=GW)
            side = FakeSidecar(sidecar_pb2_grpc.SidecarServiceStub(channel), reg.service_id, GW)
            await side.wait(1)
            fresh_etcd.stop()
            await asyncio.sleep(1.0)
            assert not side.task.done()  # the stream survives the outage
            fresh_etcd.start()
            mesh = mesh_pb2_grpc.MeshServiceStub(channel)
            request = mpb.CreateTrafficPolicyRequest(policy=traffic(source="api-gateway"))
            for _ in range(100):  # the first writes after a restart may race the reconnect
                try:
                    created = await mesh.CreateTrafficPolicy(request, metadata=ADMIN)
                    break
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE
                    await asyncio.sleep(0.1)
            snapshot = await side.wait(2, timeout=15.0)
            assert snapshot.version >= created.revision
            assert [p.name for p in snapshot.traffic_policies] == [request.policy.name]
    finally:
        if side is not None:
            await side.close()
        await plane.stop(grace=0.5)
