"""The combining-order table of test_engine.py, through the API: each case's policies are
created over gRPC on a real server, then the Explain RPC answers (one case per step at least)."""

from __future__ import annotations

import pytest

from lucid_cp.api.lucid.mesh.v1 import mesh_pb2 as pb
from lucid_cp.mesh.engine import Request
from lucid_cp.mesh.selectors import CLUSTERS, PLANES, Workload

from .conftest import ADMIN, Mesh
from .test_engine import CASES, CORE, GW, Case, wire

# Every step of the combining order, and shadow mode. Deny-all defaults come from sidecar
# configurations: tests/sidecar/test_sidecar_defaults.py runs those through Explain.
IDS = (
    "require-auth-unmet-401",
    "require-auth-required-claim-held",
    "require-role-held",
    "unmet-auth-beats-unmet-mtls-401",
    "requirement-of-any-priority-beats-a-higher-allow",
    "higher-priority-allow-beats-deny",
    "deny-wins-ties",
    "source-selector-by-label",
    "implicit-default-deny-once-destination-has-allow-rules",
    "disabled-policies-are-ignored",
    "traffic-rule-not-matching-falls-through",
    "traffic-priority-order",
    "traffic-mirror",
    "traffic-weighted-split",
    "security-deny-stops-before-traffic",
    "shadow-deny-differs",
    "shadow-traffic-redirect-differs",
    "shadow-same-decision-not-reported",
)
SELECTED = [c for c in CASES if c.id in IDS]
_CLUSTER = {v: k for k, v in CLUSTERS.items()}
_PLANE = {v: k for k, v in PLANES.items()}


def test_the_selection_covers_what_it_names() -> None:
    assert sorted(c.id for c in SELECTED) == sorted(IDS)
    assert not any(c.deny_all for c in SELECTED)


def _workload(w: Workload) -> pb.Workload:
    return pb.Workload(
        name=w.name, cluster=_CLUSTER.get(w.cluster, 0), plane=_PLANE.get(w.plane, 0)
    )  # type: ignore[arg-type]


def _explain_request(case: Case) -> pb.ExplainRequest:
    r = Request(**{"source": GW, "destination": CORE} | case.request)
    out = pb.ExplainRequest(
        source=_workload(r.source),
        destination=_workload(r.destination),
        method=r.method,
        path=r.path,
        headers=dict(r.headers),
        query=dict(r.query),
        peer_mtls_valid=r.peer_mtls_valid,
    )
    if r.claims is not None:
        c = r.claims
        out.claims.CopyFrom(
            pb.Claims(
                subject=c.subject, roles=sorted(c.roles), issuer=c.issuer, audience=c.audience
            )
        )
    return out


def _summary(v: pb.Verdict) -> tuple[str, int, list[str]]:
    return wire(v.decision), v.http_status, [t.service for t in v.targets]


@pytest.mark.parametrize("case", SELECTED, ids=[c.id for c in SELECTED])
async def test_combining_order_through_explain(mesh: Mesh, case: Case) -> None:
    for policy in case.security:
        await mesh.mesh.CreateSecurityPolicy(
            pb.CreateSecurityPolicyRequest(policy=policy), metadata=ADMIN
        )
    for tpolicy in case.traffic:
        await mesh.mesh.CreateTrafficPolicy(
            pb.CreateTrafficPolicyRequest(policy=tpolicy), metadata=ADMIN
        )
    answer = await mesh.mesh.Explain(_explain_request(case), metadata=ADMIN)
    assert _summary(answer.verdict) == case.expect, answer.verdict.summary
    if case.shadow is None:
        assert not answer.HasField("shadow")
    else:
        assert _summary(answer.shadow) == case.shadow
    if case.decided_by is not None:
        won = [
            e
            for e in answer.verdict.trace
            if e.outcome == pb.TRACE_OUTCOME_WON and e.policy and e.mode == pb.POLICY_MODE_ENFORCE
        ]
        assert f"{won[-1].policy.removeprefix('p-')}/{won[-1].rule_index}" == case.decided_by
