"""Mesh control over gRPC: every MeshService method's success and error codes, list filters
and paging, write-time warnings, compare-and-swap, admin-only access, the buckets."""

from __future__ import annotations

from dataclasses import replace

import grpc
import pytest

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as dpb
from lucid_cp.api.lucid.mesh.v1 import mesh_pb2 as pb
from lucid_cp.config import RateLimit
from lucid_cp.mesh.module import MeshSystem
from tests.discovery.conftest import auth
from tests.discovery.conftest import registration as registration_of

from .conftest import (
    ADMIN,
    CA,
    SERVICE,
    SETTINGS,
    Mesh,
    breaker,
    open_mesh,
    rpc_error,
    security,
    traffic,
)

C = grpc.StatusCode
UNMATCHED = pb.WARNING_CODE_UNMATCHED_SELECTOR


async def test_create_get_traffic_policy(mesh: Mesh) -> None:
    await mesh.register("api-gateway")
    created = await mesh.mesh.CreateTrafficPolicy(
        pb.CreateTrafficPolicyRequest(policy=traffic()), metadata=ADMIN
    )
    assert created.revision > 0
    assert created.policy.priority == 100 and created.policy.namespace == "default"
    assert created.policy.enabled and created.policy.mode == pb.POLICY_MODE_ENFORCE
    assert created.created_at == created.updated_at
    # blockchain-core is not registered: a warning, not an error.
    assert [(w.code, w.field) for w in created.warnings] == [(UNMATCHED, "destination")]
    got = await mesh.mesh.GetTrafficPolicy(
        pb.GetTrafficPolicyRequest(name="gw-to-chain"), metadata=ADMIN
    )
    assert got.policy == created.policy and got.revision == created.revision
    assert got.read_revision >= created.revision and not got.warnings
    assert got.created_at == created.created_at


async def test_duplicate_policy_name_is_already_exists_per_namespace(mesh: Mesh) -> None:
    first = await mesh.mesh.CreateTrafficPolicy(
        pb.CreateTrafficPolicyRequest(policy=traffic()), metadata=ADMIN
    )
    code, reason, _ = await rpc_error(
        mesh.mesh.CreateTrafficPolicy(
            pb.CreateTrafficPolicyRequest(policy=traffic(priority=5)), metadata=ADMIN
        )
    )
    assert (code, reason) == (C.ALREADY_EXISTS, "LUCID_ERR_1908")
    other = await mesh.mesh.CreateTrafficPolicy(
        pb.CreateTrafficPolicyRequest(policy=traffic(namespace="prod")), metadata=ADMIN
    )
    assert other.revision > first.revision
    # A security policy of the same name is another resource.
    await mesh.mesh.CreateSecurityPolicy(
        pb.CreateSecurityPolicyRequest(policy=security(name="gw-to-chain")), metadata=ADMIN
    )


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        (traffic(name="X"), "policy.name"),  # a field rule
        (traffic(source="a,b"), "policy.source"),  # selector grammar (checks.py)
        (
            traffic(
                rules=[
                    {
                        "action": "TRAFFIC_ACTION_WEIGHTED_SPLIT",
                        "weight": 60,
                        "parameters": {"destination": "chain-a"},
                    },
                    {
                        "action": "TRAFFIC_ACTION_WEIGHTED_SPLIT",
                        "weight": 30,
                        "parameters": {"destination": "chain-b"},
                    },
                ]
            ),
            "policy.rules[0].weight",
        ),
    ],
)
async def test_invalid_traffic_policy_is_1201(
    mesh: Mesh, policy: pb.TrafficPolicy, field: str
) -> None:
    code, reason, violations = await rpc_error(
        mesh.mesh.CreateTrafficPolicy(pb.CreateTrafficPolicyRequest(policy=policy), metadata=ADMIN)
    )
    assert (code, reason) == (C.INVALID_ARGUMENT, "LUCID_ERR_1201")
    assert field in [f for f, _ in violations]
    listed = await mesh.mesh.ListTrafficPolicies(pb.ListTrafficPoliciesRequest(), metadata=ADMIN)
    assert listed.total == 0  # nothing stored


async def test_invalid_security_policy_is_1203(mesh: Mesh) -> None:
    bad = security(rules=[{"action": "SECURITY_ACTION_REQUIRE_ROLE", "authorization": {}}])
    code, reason, violations = await rpc_error(
        mesh.mesh.CreateSecurityPolicy(pb.CreateSecurityPolicyRequest(policy=bad), metadata=ADMIN)
    )
    assert (code, reason) == (C.INVALID_ARGUMENT, "LUCID_ERR_1203")
    assert [f for f, _ in violations] == ["policy.rules[0].authorization.roles"]
    code, reason, _ = await rpc_error(
        mesh.mesh.GetSecurityPolicy(pb.GetSecurityPolicyRequest(name="B!"), metadata=ADMIN)
    )
    assert (code, reason) == (C.INVALID_ARGUMENT, "LUCID_ERR_1203")


async def test_security_policy_warnings(mesh: Mesh) -> None:
    await mesh.register("api-gateway")
    await mesh.register("blockchain-core")
    await mesh.mesh.CreateSecurityPolicy(
        pb.CreateSecurityPolicyRequest(policy=security()), metadata=ADMIN
    )
    deny = security(name="gw-deny", rules=[{"action": "SECURITY_ACTION_DENY"}])
    created = await mesh.mesh.CreateSecurityPolicy(
        pb.CreateSecurityPolicyRequest(policy=deny), metadata=ADMIN
    )
    assert pb.WARNING_CODE_ALLOW_DENY_TIE in [w.code for w in created.warnings]


async def test_replace_policy(mesh: Mesh) -> None:
    created = await mesh.mesh.CreateTrafficPolicy(
        pb.CreateTrafficPolicyRequest(policy=traffic()), metadata=ADMIN
    )
    replaced = await mesh.mesh.ReplaceTrafficPolicy(
        pb.ReplaceTrafficPolicyRequest(
            name="gw-to-chain", policy=traffic(priority=7), expected_revision=created.revision
        ),
        metadata=ADMIN,
    )
    assert replaced.policy.priority == 7 and replaced.revision > created.revision
    assert replaced.created_at == created.created_at
    # The old revision lost: 409 / ABORTED, LUCID_ERR_1905.
    code, reason, _ = await rpc_error(
        mesh.mesh.ReplaceTrafficPolicy(
            pb.ReplaceTrafficPolicyRequest(
                name="gw-to-chain", policy=traffic(priority=8), expected_revision=created.revision
            ),
            metadata=ADMIN,
        )
    )
    assert (code, reason) == (C.ABORTED, "LUCID_ERR_1905")
    # Unconditional: wins.
    again = await mesh.mesh.ReplaceTrafficPolicy(
        pb.ReplaceTrafficPolicyRequest(name="gw-to-chain", policy=traffic(priority=9)),
        metadata=ADMIN,
    )
    assert again.policy.priority == 9
    # The body must name the addressed policy.
    code, reason, violations = await rpc_error(
        mesh.mesh.ReplaceTrafficPolicy(
            pb.ReplaceTrafficPolicyRequest(name="gw-to-chain", namespace="prod", policy=traffic()),
            metadata=ADMIN,
        )
    )
    assert (code, reason) == (C.INVALID_ARGUMENT, "LUCID_ERR_1201")
    assert [f for f, _ in violations] == ["policy.namespace"]
    # Replacing what does not exist: 404.
    code, reason, _ = await rpc_error(
        mesh.mesh.ReplaceSecurityPolicy(
            pb.ReplaceSecurityPolicyRequest(name="gw-allow", policy=security()), metadata=ADMIN
        )
    )
    assert (code, reason) == (C.NOT_FOUND, "LUCID_ERR_1907")


async def test_delete_policy(mesh: Mesh) -> None:
    await mesh.mesh.CreateSecurityPolicy(
        pb.CreateSecurityPolicyRequest(policy=security()), metadata=ADMIN
    )
    deleted = await mesh.mesh.DeleteSecurityPolicy(
        pb.DeleteSecurityPolicyRequest(name="gw-allow"), metadata=ADMIN
    )
    assert deleted.revision > 0
    for call in (
        mesh.mesh.GetSecurityPolicy(pb.GetSecurityPolicyRequest(name="gw-allow"), metadata=ADMIN),
        mesh.mesh.DeleteSecurityPolicy(
            pb.DeleteSecurityPolicyRequest(name="gw-allow"), metadata=ADMIN
        ),
    ):
        code, reason, _ = await rpc_error(call)
        assert (code, reason) == (C.NOT_FOUND, "LUCID_ERR_1907")


async def test_list_filters_and_pages(mesh: Mesh) -> None:
    names = []
    for i in range(5):
        name = f"policy-{i}"
        names.append(name)
        await mesh.mesh.CreateTrafficPolicy(
            pb.CreateTrafficPolicyRequest(
                policy=traffic(
                    name=name,
                    enabled=i % 2 == 0,
                    destination="chain" if i < 3 else "wallet",
                    namespace="a" if i != 4 else "b",
                )
            ),
            metadata=ADMIN,
        )
    every = await mesh.mesh.ListTrafficPolicies(pb.ListTrafficPoliciesRequest(), metadata=ADMIN)
    assert [p.policy.name for p in every.policies] == names
    assert every.total == 5 and every.limit == 100 and every.offset == 0
    assert every.revision >= max(p.revision for p in every.policies)
    page = await mesh.mesh.ListTrafficPolicies(
        pb.ListTrafficPoliciesRequest(limit=2, offset=1), metadata=ADMIN
    )
    assert [p.policy.name for p in page.policies] == ["policy-1", "policy-2"]
    assert page.total == 5
    for request, expected in [
        (pb.ListTrafficPoliciesRequest(namespace="b"), ["policy-4"]),
        (pb.ListTrafficPoliciesRequest(destination="wallet"), ["policy-3", "policy-4"]),
        (pb.ListTrafficPoliciesRequest(enabled=False), ["policy-1", "policy-3"]),
        (pb.ListTrafficPoliciesRequest(source="nobody"), []),
    ]:
        got = await mesh.mesh.ListTrafficPolicies(request, metadata=ADMIN)
        assert [p.policy.name for p in got.policies] == expected
        assert got.total == len(expected)
    code, reason, _ = await rpc_error(
        mesh.mesh.ListTrafficPolicies(pb.ListTrafficPoliciesRequest(limit=1001), metadata=ADMIN)
    )
    assert (code, reason) == (C.INVALID_ARGUMENT, "LUCID_ERR_1201")


async def test_circuit_breakers(mesh: Mesh) -> None:
    request = pb.UpdateCircuitBreakerRequest(service_name="blockchain-core", config=breaker())
    code, reason, _ = await rpc_error(mesh.mesh.UpdateCircuitBreaker(request, metadata=ADMIN))
    assert (code, reason) == (C.NOT_FOUND, "LUCID_ERR_1907")  # nothing registered
    await mesh.register("blockchain-core")
    updated = await mesh.mesh.UpdateCircuitBreaker(request, metadata=ADMIN)
    assert updated.service_name == "blockchain-core" and updated.revision > 0
    assert updated.config.half_open_max_calls == 3 and updated.config.timeout == 5000
    got = await mesh.mesh.GetCircuitBreaker(
        pb.GetCircuitBreakerRequest(service_name="blockchain-core"), metadata=ADMIN
    )
    assert got.config == updated.config and got.revision == updated.revision
    # Compare-and-swap.
    stale = pb.UpdateCircuitBreakerRequest(
        service_name="blockchain-core", config=breaker(failureThreshold=9), expected_revision=1
    )
    code, reason, _ = await rpc_error(mesh.mesh.UpdateCircuitBreaker(stale, metadata=ADMIN))
    assert (code, reason) == (C.ABORTED, "LUCID_ERR_1905")
    stale.expected_revision = updated.revision
    assert (
        await mesh.mesh.UpdateCircuitBreaker(stale, metadata=ADMIN)
    ).config.failure_threshold == 9
    # Invalid: 1202, by field rule and by write-time check.
    for config, field in [
        (breaker(failureThreshold=0), "config.failureThreshold"),
        (breaker(halfOpenMaxCalls=1, successThreshold=2), "config.halfOpenMaxCalls"),
    ]:
        code, reason, violations = await rpc_error(
            mesh.mesh.UpdateCircuitBreaker(
                pb.UpdateCircuitBreakerRequest(service_name="blockchain-core", config=config),
                metadata=ADMIN,
            )
        )
        assert (code, reason) == (C.INVALID_ARGUMENT, "LUCID_ERR_1202")
        assert [f for f, _ in violations] == [field]
    listed = await mesh.mesh.ListCircuitBreakers(pb.ListCircuitBreakersRequest(), metadata=ADMIN)
    assert [c.service_name for c in listed.circuit_breakers] == ["blockchain-core"]
    assert listed.total == 1
    await mesh.mesh.DeleteCircuitBreaker(
        pb.DeleteCircuitBreakerRequest(service_name="blockchain-core"), metadata=ADMIN
    )
    code, reason, _ = await rpc_error(
        mesh.mesh.GetCircuitBreaker(
            pb.GetCircuitBreakerRequest(service_name="blockchain-core"), metadata=ADMIN
        )
    )
    assert (code, reason) == (C.NOT_FOUND, "LUCID_ERR_1907")


async def test_mtls(mesh: Mesh) -> None:
    code, reason, _ = await rpc_error(mesh.mesh.GetMtls(pb.GetMtlsRequest(), metadata=ADMIN))
    assert (code, reason) == (C.NOT_FOUND, "LUCID_ERR_1907")
    config = pb.MTLSConfig(mode=pb.MTLS_MODE_STRICT, cert_authority=CA)
    updated = await mesh.mesh.UpdateMtls(pb.UpdateMtlsRequest(config=config), metadata=ADMIN)
    assert updated.config.workload_cert_ttl == 86400 and updated.revision > 0
    got = await mesh.mesh.GetMtls(pb.GetMtlsRequest(), metadata=ADMIN)
    assert got.config == updated.config and got.read_revision >= updated.revision
    for bad, field in [
        (pb.MTLSConfig(mode=pb.MTLS_MODE_STRICT), "config.certAuthority"),  # message rule
        (pb.MTLSConfig(cert_authority="-----BEGIN PRIVATE KEY-----"), "config.certAuthority"),
    ]:
        code, reason, violations = await rpc_error(
            mesh.mesh.UpdateMtls(pb.UpdateMtlsRequest(config=bad), metadata=ADMIN)
        )
        assert (code, reason) == (C.INVALID_ARGUMENT, "LUCID_ERR_1204")
        assert [f for f, _ in violations] == [field]
    code, reason, _ = await rpc_error(
        mesh.mesh.UpdateMtls(
            pb.UpdateMtlsRequest(config=config, expected_revision=updated.revision + 100),
            metadata=ADMIN,
        )
    )
    assert (code, reason) == (C.ABORTED, "LUCID_ERR_1905")


async def test_every_method_is_admin_only(mesh: Mesh) -> None:
    calls = [
        mesh.mesh.CreateTrafficPolicy(
            pb.CreateTrafficPolicyRequest(policy=traffic()), metadata=SERVICE
        ),
        mesh.mesh.ListTrafficPolicies(pb.ListTrafficPoliciesRequest(), metadata=SERVICE),
        mesh.mesh.CreateSecurityPolicy(
            pb.CreateSecurityPolicyRequest(policy=security()), metadata=SERVICE
        ),
        mesh.mesh.UpdateMtls(
            pb.UpdateMtlsRequest(config=pb.MTLSConfig(cert_authority=CA)), metadata=SERVICE
        ),
        mesh.mesh.GetMtls(pb.GetMtlsRequest(), metadata=SERVICE),
        mesh.mesh.UpdateCircuitBreaker(
            pb.UpdateCircuitBreakerRequest(service_name="api-gateway", config=breaker()),
            metadata=SERVICE,
        ),
        mesh.mesh.Explain(pb.ExplainRequest(), metadata=SERVICE),
    ]
    for call in calls:
        code, reason, _ = await rpc_error(call)
        assert (code, reason) == (C.PERMISSION_DENIED, "LUCID_ERR_1902")


async def test_buckets_are_declared_and_enforced() -> None:
    assert MeshSystem.rate_limits == {"traffic": RateLimit(100), "security": RateLimit(50)}
    settings = replace(SETTINGS, rate_limits={"security": RateLimit(2)})
    async for mesh in open_mesh(settings):
        for _ in range(2):
            await rpc_error(mesh.mesh.GetMtls(pb.GetMtlsRequest(), metadata=ADMIN))
        code, reason, _ = await rpc_error(mesh.mesh.GetMtls(pb.GetMtlsRequest(), metadata=ADMIN))
        assert (code, reason) == (C.RESOURCE_EXHAUSTED, "LUCID_ERR_1903")
        # Another bucket is untouched.
        await mesh.mesh.ListTrafficPolicies(pb.ListTrafficPoliciesRequest(), metadata=ADMIN)


def _explain(
    source: str = "api-gateway", destination: str = "blockchain-core", **kw: object
) -> pb.ExplainRequest:
    return pb.ExplainRequest(
        source=pb.Workload(name=source, cluster=dpb.CLUSTER_API_GATEWAY, plane=dpb.PLANE_OPS),
        destination=pb.Workload(name=destination),
        **kw,  # type: ignore[arg-type]
    )


async def test_explain_through_the_rpc(mesh: Mesh) -> None:
    empty = await mesh.mesh.Explain(_explain(), metadata=ADMIN)
    assert empty.verdict.decision == pb.DECISION_ALLOW and not empty.HasField("shadow")
    await mesh.register("blockchain-core")
    await mesh.mesh.UpdateCircuitBreaker(
        pb.UpdateCircuitBreakerRequest(service_name="blockchain-core", config=breaker()),
        metadata=ADMIN,
    )
    deny = security(
        name="deny-admin", rules=[{"action": "SECURITY_ACTION_DENY", "match": {"path": "/admin*"}}]
    )
    await mesh.mesh.CreateSecurityPolicy(
        pb.CreateSecurityPolicyRequest(policy=deny), metadata=ADMIN
    )
    split = traffic(
        name="canary",
        mode="POLICY_MODE_SHADOW",
        rules=[{"action": "TRAFFIC_ACTION_REDIRECT", "parameters": {"destination": "chain-v2"}}],
    )
    written = await mesh.mesh.CreateTrafficPolicy(
        pb.CreateTrafficPolicyRequest(policy=split), metadata=ADMIN
    )

    denied = await mesh.mesh.Explain(_explain(path="/admin/x"), metadata=ADMIN)
    assert (denied.verdict.decision, denied.verdict.http_status) == (pb.DECISION_DENY, 403)
    assert denied.verdict.trace[0].policy == "deny-admin"
    assert denied.revision >= written.revision

    routed = await mesh.mesh.Explain(_explain(path="/api"), metadata=ADMIN)
    assert routed.verdict.decision == pb.DECISION_ALLOW
    [target] = routed.verdict.targets
    assert target.service == "blockchain-core"
    assert target.settings.circuit_breaker.failure_threshold == 5  # the stored breaker
    # The shadow redirect would have changed the decision.
    assert routed.shadow.decision == pb.DECISION_REDIRECT
    assert [t.service for t in routed.shadow.targets] == ["chain-v2"]

    # Disabling the policy through a replacement takes it out of Explain.
    await mesh.mesh.ReplaceSecurityPolicy(
        pb.ReplaceSecurityPolicyRequest(
            name="deny-admin",
            policy=security(
                name="deny-admin",
                enabled=False,
                rules=[{"action": "SECURITY_ACTION_DENY", "match": {"path": "/admin*"}}],
            ),
        ),
        metadata=ADMIN,
    )
    allowed = await mesh.mesh.Explain(_explain(path="/admin/x"), metadata=ADMIN)
    assert allowed.verdict.decision == pb.DECISION_ALLOW


async def test_explain_invalid_request_is_1201(mesh: Mesh) -> None:
    code, reason, violations = await rpc_error(
        mesh.mesh.Explain(pb.ExplainRequest(source=pb.Workload(name="api-gateway")), metadata=ADMIN)
    )
    assert (code, reason) == (C.INVALID_ARGUMENT, "LUCID_ERR_1201")
    assert "destination" in [f for f, _ in violations]


def test_invalid_request_errors_per_method() -> None:
    """The contract's per-method override: mesh names one error per method; discovery keeps its
    single one; a name no served method has stops start-up."""
    from lucid_cp.app import method_policies
    from lucid_cp.discovery.errors import InvalidServiceConfiguration
    from lucid_cp.discovery.module import DiscoverySystem
    from lucid_cp.mesh.errors import (
        InvalidCircuitBreaker,
        InvalidMtlsConfig,
        InvalidSecurityPolicy,
        InvalidTrafficPolicy,
    )
    from lucid_cp.rpc.policy import PolicyError, policies_from

    policies = method_policies((DiscoverySystem, MeshSystem))
    service = "/lucid.mesh.v1.MeshService/"
    assert policies[service + "ReplaceTrafficPolicy"].invalid is InvalidTrafficPolicy
    assert policies[service + "ListCircuitBreakers"].invalid is InvalidCircuitBreaker
    assert policies[service + "DeleteSecurityPolicy"].invalid is InvalidSecurityPolicy
    assert policies[service + "GetMtls"].invalid is InvalidMtlsConfig
    assert all(p.admin_only for name, p in policies.items() if name.startswith(service))
    discovery = [p for n, p in policies.items() if n.startswith("/lucid.discovery")]
    assert {p.invalid for p in discovery} == {InvalidServiceConfiguration}
    with pytest.raises(PolicyError, match=r"no\.such\.Method"):
        policies_from(MeshSystem.files, InvalidTrafficPolicy, {"no.such.Method": InvalidMtlsConfig})


FINITE = "must be a finite number (not NaN or Infinity)"


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
async def test_non_finite_numbers_in_a_struct_are_invalid_argument(mesh: Mesh, bad: float) -> None:
    policy = security(rules=[{"action": "SECURITY_ACTION_REQUIRE_AUTH"}])
    policy.rules[0].authentication.jwt.required_claims.update({"x": bad})
    code, reason, violations = await rpc_error(
        mesh.mesh.CreateSecurityPolicy(
            pb.CreateSecurityPolicyRequest(policy=policy), metadata=ADMIN
        )
    )
    assert (code, reason) == (C.INVALID_ARGUMENT, "LUCID_ERR_1203")
    assert violations == [("policy.rules[0].authentication.jwt.requiredClaims.x", FINITE)]
    # Discovery's free-form metadata: the same generic rule.
    reg = dpb.RegisterRequest(registration=registration_of("api-gateway"))
    reg.registration.metadata.update({"weight": bad})
    code, _, violations = await rpc_error(
        mesh.discovery.Register(reg, metadata=auth("api-gateway"))
    )
    assert code == C.INVALID_ARGUMENT
    assert violations == [("registration.metadata.weight", FINITE)]


async def test_replacing_a_missing_policy_with_expected_revision_is_404(mesh: Mesh) -> None:
    for call in (
        mesh.mesh.ReplaceTrafficPolicy(
            pb.ReplaceTrafficPolicyRequest(
                name="gw-to-chain", policy=traffic(), expected_revision=7
            ),
            metadata=ADMIN,
        ),
        mesh.mesh.ReplaceSecurityPolicy(
            pb.ReplaceSecurityPolicyRequest(
                name="gw-allow", policy=security(), expected_revision=7
            ),
            metadata=ADMIN,
        ),
    ):
        code, reason, _ = await rpc_error(call)
        assert (code, reason) == (C.NOT_FOUND, "LUCID_ERR_1907")


async def test_the_body_of_a_replacement_repeats_the_addressed_namespace(mesh: Mesh) -> None:
    await mesh.mesh.CreateTrafficPolicy(
        pb.CreateTrafficPolicyRequest(policy=traffic(namespace="prod")), metadata=ADMIN
    )
    # An omitted body namespace is "default" (its declared default), not the addressed one.
    code, reason, violations = await rpc_error(
        mesh.mesh.ReplaceTrafficPolicy(
            pb.ReplaceTrafficPolicyRequest(name="gw-to-chain", namespace="prod", policy=traffic()),
            metadata=ADMIN,
        )
    )
    assert (code, reason) == (C.INVALID_ARGUMENT, "LUCID_ERR_1201")
    assert violations == [
        (
            "policy.namespace",
            "must equal the namespace addressed ('prod'): the body repeats it "
            "(omitted, it is 'default')",
        )
    ]
    replaced = await mesh.mesh.ReplaceTrafficPolicy(
        pb.ReplaceTrafficPolicyRequest(
            name="gw-to-chain", namespace="prod", policy=traffic(namespace="prod", priority=3)
        ),
        metadata=ADMIN,
    )
    assert (replaced.policy.namespace, replaced.policy.priority) == ("prod", 3)


async def test_selectors_and_targets_are_stored_canonical(mesh: Mesh) -> None:
    await mesh.register("chain-v2")
    await mesh.mesh.UpdateCircuitBreaker(
        pb.UpdateCircuitBreakerRequest(service_name="chain-v2", config=breaker()), metadata=ADMIN
    )
    policy = traffic(
        source=" plane=ops , api-* ",
        destination=" blockchain-core ",
        rules=[{"action": "TRAFFIC_ACTION_REDIRECT", "parameters": {"destination": " chain-v2 "}}],
    )
    created = await mesh.mesh.CreateTrafficPolicy(
        pb.CreateTrafficPolicyRequest(policy=policy), metadata=ADMIN
    )
    assert (created.policy.source, created.policy.destination) == (
        "api-*,plane=ops",
        "blockchain-core",
    )
    assert created.policy.rules[0].parameters["destination"] == "chain-v2"
    for source in ("api-*,plane=ops", "plane=ops,api-*", " api-* , plane=ops"):
        listed = await mesh.mesh.ListTrafficPolicies(
            pb.ListTrafficPoliciesRequest(source=source, destination=" blockchain-core"),
            metadata=ADMIN,
        )
        assert [p.policy.name for p in listed.policies] == ["gw-to-chain"], source
    answer = await mesh.mesh.Explain(_explain(), metadata=ADMIN)
    [target] = answer.verdict.targets
    assert target.service == "chain-v2"
    assert target.settings.circuit_breaker.failure_threshold == 5  # the lookup hits
    # Spaces inside a term are refused.
    code, reason, violations = await rpc_error(
        mesh.mesh.CreateTrafficPolicy(
            pb.CreateTrafficPolicyRequest(policy=traffic(name="other", source="plane = wallet")),
            metadata=ADMIN,
        )
    )
    assert (code, reason) == (C.INVALID_ARGUMENT, "LUCID_ERR_1201")
    assert [f for f, _ in violations] == ["policy.source"]


async def test_a_disabled_policy_gets_no_tie_warning(mesh: Mesh) -> None:
    await mesh.register("api-gateway")
    await mesh.register("blockchain-core")
    await mesh.mesh.CreateSecurityPolicy(
        pb.CreateSecurityPolicyRequest(policy=security()), metadata=ADMIN
    )
    deny = security(name="gw-deny", enabled=False, rules=[{"action": "SECURITY_ACTION_DENY"}])
    created = await mesh.mesh.CreateSecurityPolicy(
        pb.CreateSecurityPolicyRequest(policy=deny), metadata=ADMIN
    )
    assert list(created.warnings) == []


async def test_an_agreeing_shadow_policy_is_in_the_explain_trace(mesh: Mesh) -> None:
    for policy in (
        security(name="deny-gw", rules=[{"action": "SECURITY_ACTION_DENY"}], priority=200),
        security(
            name="deny-dry", rules=[{"action": "SECURITY_ACTION_DENY"}], mode="POLICY_MODE_SHADOW"
        ),
    ):
        await mesh.mesh.CreateSecurityPolicy(
            pb.CreateSecurityPolicyRequest(policy=policy), metadata=ADMIN
        )
    answer = await mesh.mesh.Explain(_explain(), metadata=ADMIN)
    assert answer.verdict.decision == pb.DECISION_DENY and not answer.HasField("shadow")
    assert [(e.policy, e.mode, e.outcome) for e in answer.verdict.trace] == [
        ("deny-gw", pb.POLICY_MODE_ENFORCE, pb.TRACE_OUTCOME_WON),
        ("deny-dry", pb.POLICY_MODE_SHADOW, pb.TRACE_OUTCOME_LOST),
    ]
    assert answer.verdict.trace[1].reason.startswith("shadow, would have: ")
