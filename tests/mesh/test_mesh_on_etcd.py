"""Mesh control on a real etcd with two replicas: a write through replica A is readable (and
explained) through replica B, whose index follows the store's watch; a lost compare-and-swap
through B is a 1905 conflict."""

from __future__ import annotations

from dataclasses import replace

import grpc
import pytest

from lucid_cp.api.lucid.mesh.v1 import mesh_pb2 as pb
from lucid_cp.api.lucid.mesh.v1 import mesh_pb2_grpc
from lucid_cp.app import start_control_plane
from lucid_cp.mesh.index import MeshIndex
from lucid_cp.mesh.module import MeshSystem

from .conftest import ADMIN, SETTINGS, rpc_error, security, traffic

pytestmark = pytest.mark.etcd


async def _until_applied(index: MeshIndex, revision: int) -> None:
    # The other replica's index catches up through its own watch.
    assert await index.wait_for(revision, 5.0), f"replica B never applied revision {revision}"


async def test_two_replicas_share_mesh_resources(fresh_etcd) -> None:
    settings = replace(SETTINGS, store_url=fresh_etcd.url)
    first, second = await start_control_plane(settings), await start_control_plane(settings)
    try:
        async with (
            grpc.aio.insecure_channel(first.grpc_target) as a,
            grpc.aio.insecure_channel(second.grpc_target) as b,
        ):
            stub_a, stub_b = mesh_pb2_grpc.MeshServiceStub(a), mesh_pb2_grpc.MeshServiceStub(b)
            created = await stub_a.CreateTrafficPolicy(
                pb.CreateTrafficPolicyRequest(policy=traffic()), metadata=ADMIN
            )
            index_b = second.system(MeshSystem).index
            await _until_applied(index_b, created.revision)
            got = await stub_b.GetTrafficPolicy(
                pb.GetTrafficPolicyRequest(name="gw-to-chain"), metadata=ADMIN
            )
            assert got.policy == created.policy and got.revision == created.revision

            # Duplicate through the other replica: the store refuses it.
            code, reason, _ = await rpc_error(
                stub_b.CreateTrafficPolicy(
                    pb.CreateTrafficPolicyRequest(policy=traffic()), metadata=ADMIN
                )
            )
            assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "LUCID_ERR_1908")

            # B replaces it; A's compare-and-swap on the old revision loses.
            await stub_b.ReplaceTrafficPolicy(
                pb.ReplaceTrafficPolicyRequest(
                    name="gw-to-chain",
                    policy=traffic(priority=3),
                    expected_revision=created.revision,
                ),
                metadata=ADMIN,
            )
            code, reason, _ = await rpc_error(
                stub_a.ReplaceTrafficPolicy(
                    pb.ReplaceTrafficPolicyRequest(
                        name="gw-to-chain",
                        policy=traffic(priority=4),
                        expected_revision=created.revision,
                    ),
                    metadata=ADMIN,
                )
            )
            assert (code, reason) == (grpc.StatusCode.ABORTED, "LUCID_ERR_1905")

            # A security policy written through A decides Explain on B.
            deny = security(name="deny-all-gw", rules=[{"action": "SECURITY_ACTION_DENY"}])
            written = await stub_a.CreateSecurityPolicy(
                pb.CreateSecurityPolicyRequest(policy=deny), metadata=ADMIN
            )
            await _until_applied(index_b, written.revision)
            answer = await stub_b.Explain(
                pb.ExplainRequest(
                    source=pb.Workload(name="api-gateway"),
                    destination=pb.Workload(name="blockchain-core"),
                ),
                metadata=ADMIN,
            )
            assert answer.verdict.decision == pb.DECISION_DENY
            assert answer.revision >= written.revision
            listed = await stub_b.ListSecurityPolicies(
                pb.ListSecurityPoliciesRequest(), metadata=ADMIN
            )
            assert [p.policy.name for p in listed.policies] == ["deny-all-gw"]
    finally:
        await first.stop(grace=0.5)
        await second.stop(grace=0.5)
