"""The decision engine, table-driven over every step of the combining order."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from google.protobuf import json_format

from lucid_cp.api.lucid.mesh.v1 import mesh_pb2 as pb
from lucid_cp.mesh import checks
from lucid_cp.mesh.engine import Claims, MeshConfig, Request, decide, to_explain_response
from lucid_cp.mesh.selectors import Workload
from lucid_cp.validation import normalize

GW = Workload("api-gateway", "api-gateway", "ops")
WALLET = Workload("tron-wallet", "tron-payment", "wallet")
CORE = Workload("blockchain-core", "blockchain-core", "chain")
ADMIN = Claims("alice", frozenset({"admin"}), issuer="lucid", audience="mesh")
USER = Claims("bob", frozenset({"user"}), issuer="lucid", audience="mesh")


# Policy names get a "p-" prefix (names are 3..50 characters); traces show it.


def sec(name: str, rules: list[dict[str, Any]], **over: Any) -> pb.SecurityPolicy:
    data = {"name": f"p-{name}", "source": "*", "destination": "blockchain-core", "rules": rules}
    p = json_format.ParseDict(data | over, pb.SecurityPolicy())
    assert normalize(p) == [] and checks.security_policy_errors(p) == []
    return p


def tp(name: str, rules: list[dict[str, Any]], **over: Any) -> pb.TrafficPolicy:
    data = {"name": f"p-{name}", "source": "*", "destination": "blockchain-core", "rules": rules}
    p = json_format.ParseDict(data | over, pb.TrafficPolicy())
    assert normalize(p) == [] and checks.traffic_policy_errors(p) == []
    return p


def r(action: str, **kw: Any) -> dict[str, Any]:
    return {"action": action, **kw}


ALLOW, DENY = "SECURITY_ACTION_ALLOW", "SECURITY_ACTION_DENY"
AUTH, MTLS, ROLE = (
    "SECURITY_ACTION_REQUIRE_AUTH",
    "SECURITY_ACTION_REQUIRE_MTLS",
    "SECURITY_ACTION_REQUIRE_ROLE",
)
T_ALLOW, T_DENY = "TRAFFIC_ACTION_ALLOW", "TRAFFIC_ACTION_DENY"
REDIRECT, MIRROR, SPLIT = (
    "TRAFFIC_ACTION_REDIRECT",
    "TRAFFIC_ACTION_MIRROR",
    "TRAFFIC_ACTION_WEIGHTED_SPLIT",
)
ROLE_ADMIN = r(ROLE, authorization={"roles": ["admin"]})
SHADOW = {"mode": "POLICY_MODE_SHADOW"}


def to(dest: str, **params: Any) -> dict[str, Any]:
    return {"parameters": {"destination": dest, **params}}


@dataclass
class Case:
    id: str
    expect: tuple[str, int, list[str]]  # decision wire, status, target services
    security: list[pb.SecurityPolicy] = field(default_factory=list)
    traffic: list[pb.TrafficPolicy] = field(default_factory=list)
    request: dict[str, Any] = field(default_factory=dict)
    deny_all: tuple[str, ...] = ()
    shadow: tuple[str, int, list[str]] | None = None
    decided_by: str | None = None  # "policy/rule" of the WON entry of the deciding stage


def wire(decision: int) -> str:
    return pb.Decision.Name(decision).removeprefix("DECISION_").lower().replace("_", "-")


CASES = [
    # --- step 1: requirements -------------------------------------------------------------------
    Case("no-policies-mesh-default-allow", ("allow", 0, ["blockchain-core"])),
    Case("require-auth-unmet-401", ("deny", 401, []), [sec("auth", [r(AUTH)])]),
    Case(
        "require-auth-held",
        ("allow", 0, ["blockchain-core"]),
        [sec("auth", [r(AUTH)])],
        request={"claims": USER},
    ),
    Case(
        "require-auth-wrong-issuer-401",
        ("deny", 401, []),
        [sec("auth", [r(AUTH, authentication={"jwt": {"issuer": "other"}})])],
        request={"claims": USER},
    ),
    Case(
        "require-auth-required-claim",
        ("deny", 401, []),
        [sec("auth", [r(AUTH, authentication={"jwt": {"requiredClaims": {"roles": "admin"}}})])],
        request={"claims": USER},
    ),
    Case(
        "require-auth-required-claim-held",
        ("allow", 0, ["blockchain-core"]),
        [
            sec(
                "auth",
                [
                    r(
                        AUTH,
                        authentication={
                            "jwt": {"requiredClaims": {"roles": "admin", "sub": "alice"}}
                        },
                    )
                ],
            )
        ],
        request={"claims": ADMIN},
    ),
    Case(
        "require-auth-satisfied-by-mtls-method",
        ("allow", 0, ["blockchain-core"]),
        [
            sec(
                "auth",
                [r(AUTH, authentication={"methods": ["AUTH_METHOD_MTLS", "AUTH_METHOD_JWT"]})],
            )
        ],
        request={"peer_mtls_valid": True},
    ),
    Case(
        "require-auth-not-required",
        ("allow", 0, ["blockchain-core"]),
        [sec("auth", [r(AUTH, authentication={"required": False})])],
    ),
    Case("require-mtls-unmet-403", ("deny", 403, []), [sec("m", [r(MTLS)])]),
    Case(
        "require-mtls-held",
        ("allow", 0, ["blockchain-core"]),
        [sec("m", [r(MTLS)])],
        request={"peer_mtls_valid": True},
    ),
    Case(
        "require-role-unmet-403",
        ("deny", 403, []),
        [sec("role", [ROLE_ADMIN])],
        request={"claims": USER},
    ),
    Case("require-role-without-token-403", ("deny", 403, []), [sec("role", [ROLE_ADMIN])]),
    Case(
        "require-role-held",
        ("allow", 0, ["blockchain-core"]),
        [sec("role", [ROLE_ADMIN])],
        request={"claims": ADMIN},
    ),
    Case(
        "unmet-auth-beats-unmet-mtls-401",
        ("deny", 401, []),
        [sec("m", [r(MTLS)], priority=900), sec("auth", [r(AUTH)], priority=1)],
    ),
    Case(
        "requirement-of-any-priority-beats-a-higher-allow",
        ("deny", 403, []),
        [sec("open", [r(ALLOW)], priority=1000), sec("m", [r(MTLS)], priority=1)],
    ),
    Case(
        "requirement-not-matching-the-path-is-ignored",
        ("allow", 0, ["blockchain-core"]),
        [sec("m", [r(MTLS, match={"path": "/admin/*"})])],
        request={"path": "/public"},
    ),
    Case(
        "requirement-matching-the-path-prefix",
        ("deny", 403, []),
        [sec("m", [r(MTLS, match={"path": "/admin/*"})])],
        request={"path": "/admin/keys"},
    ),
    # --- step 2: allow / deny --------------------------------------------------------------------
    Case(
        "allow-matches", ("allow", 0, ["blockchain-core"]), [sec("a", [r(ALLOW)])], decided_by="a/0"
    ),
    Case("deny-matches-403", ("deny", 403, []), [sec("d", [r(DENY)])], decided_by="d/0"),
    Case(
        "higher-priority-allow-beats-deny",
        ("allow", 0, ["blockchain-core"]),
        [sec("d", [r(DENY)], priority=100), sec("a", [r(ALLOW)], priority=200)],
        decided_by="a/0",
    ),
    Case(
        "higher-priority-deny-beats-allow",
        ("deny", 403, []),
        [sec("d", [r(DENY)], priority=200), sec("a", [r(ALLOW)], priority=100)],
        decided_by="d/0",
    ),
    Case(
        "deny-wins-ties",
        ("deny", 403, []),
        [sec("a", [r(ALLOW)]), sec("d", [r(DENY)])],
        decided_by="d/0",
    ),
    Case(
        "deny-wins-ties-within-one-policy",
        ("deny", 403, []),
        [sec("both", [r(ALLOW), r(DENY, match={"method": "DELETE"})])],
        request={"method": "DELETE"},
        decided_by="both/1",
    ),
    Case(
        "deny-on-another-method-does-not-match",
        ("allow", 0, ["blockchain-core"]),
        [sec("both", [r(ALLOW), r(DENY, match={"method": "DELETE"})])],
        decided_by="both/0",
    ),
    Case(
        "source-selector-by-label",
        ("deny", 403, []),
        [sec("d", [r(DENY)], source="plane=wallet"), sec("a", [r(ALLOW)], priority=1)],
        request={"source": WALLET},
    ),
    Case(
        "source-selector-by-label-not-matching",
        ("allow", 0, ["blockchain-core"]),
        [sec("d", [r(DENY)], source="plane=wallet"), sec("a", [r(ALLOW)], priority=1)],
    ),
    Case(
        "rule-source-labels",
        ("deny", 403, []),
        [
            sec(
                "d",
                [r(DENY, match={"sourceLabels": {"cluster": "tron-payment"}}), r(ALLOW)],
                priority=5,
            )
        ],
        request={"source": WALLET},
    ),
    Case(
        "header-match-case-insensitive-name",
        ("deny", 403, []),
        [sec("d", [r(DENY, match={"headers": {"X-Debug": "1"}})])],
        request={"headers": {"x-debug": "1"}},
    ),
    # --- step 3: defaults ------------------------------------------------------------------------
    Case(
        "implicit-default-deny-once-destination-has-allow-rules",
        ("deny", 403, []),
        [sec("gw-only", [r(ALLOW)], source="api-gateway")],
        request={"source": WALLET},
    ),
    Case(
        "allow-rule-not-matching-the-request-still-closes-the-destination",
        ("deny", 403, []),
        [sec("get-only", [r(ALLOW, match={"method": "GET"})])],
        request={"method": "POST"},
    ),
    Case(
        "allow-rule-for-another-destination-keeps-the-mesh-default",
        ("allow", 0, ["blockchain-core"]),
        [sec("other", [r(ALLOW)], destination="tron-*")],
    ),
    Case("destination-deny-all-default", ("deny", 403, []), deny_all=("blockchain-core",)),
    Case(
        "deny-all-default-overridden-by-an-allow",
        ("allow", 0, ["blockchain-core"]),
        [sec("a", [r(ALLOW)])],
        deny_all=("blockchain-core",),
    ),
    Case(
        "deny-all-of-another-destination",
        ("allow", 0, ["blockchain-core"]),
        deny_all=("tron-wallet",),
    ),
    Case(
        "disabled-policies-are-ignored",
        ("allow", 0, ["blockchain-core"]),
        [sec("d", [r(DENY)], enabled=False), sec("m", [r(MTLS)], enabled=False)],
        [tp("t", [r(T_DENY)], enabled=False)],
    ),
    # --- traffic ---------------------------------------------------------------------------------
    Case("traffic-allow", ("allow", 0, ["blockchain-core"]), traffic=[tp("t", [r(T_ALLOW)])]),
    Case("traffic-deny-403", ("deny", 403, []), traffic=[tp("t", [r(T_DENY)])]),
    Case(
        "traffic-redirect",
        ("redirect", 0, ["tron-wallet"]),
        traffic=[tp("t", [r(REDIRECT, **to("tron-wallet"))])],
    ),
    Case(
        "traffic-mirror",
        ("mirror", 0, ["blockchain-core", "tron-wallet"]),
        traffic=[tp("t", [r(MIRROR, **to("tron-wallet", percent=25))])],
    ),
    Case(
        "traffic-weighted-split",
        ("weighted-split", 0, ["blockchain-core", "tron-wallet"]),
        traffic=[
            tp(
                "t",
                [
                    r(SPLIT, weight=80, **to("blockchain-core")),
                    r(SPLIT, weight=20, **to("tron-wallet")),
                ],
            )
        ],
    ),
    Case(
        "traffic-rules-in-order-first-match-decides",
        ("deny", 403, []),
        traffic=[
            tp("t", [r(T_DENY, match={"path": "/admin/*"}), r(REDIRECT, **to("tron-wallet"))])
        ],
        request={"path": "/admin/x"},
        decided_by="t/0",
    ),
    Case(
        "traffic-rule-not-matching-falls-through",
        ("redirect", 0, ["tron-wallet"]),
        traffic=[
            tp("t", [r(T_DENY, match={"path": "/admin/*"}), r(REDIRECT, **to("tron-wallet"))])
        ],
        request={"path": "/public"},
        decided_by="t/1",
    ),
    Case(
        "traffic-priority-order",
        ("redirect", 0, ["tron-wallet"]),
        traffic=[
            tp("low", [r(T_DENY)], priority=10),
            tp("high", [r(REDIRECT, **to("tron-wallet"))], priority=500),
        ],
        decided_by="high/0",
    ),
    Case(
        "traffic-equal-priority-by-name",
        ("deny", 403, []),
        traffic=[tp("zz", [r(T_ALLOW)]), tp("aa", [r(T_DENY)])],
        decided_by="aa/0",
    ),
    Case(
        "traffic-query-and-destination-labels",
        ("deny", 403, []),
        traffic=[
            tp(
                "t",
                [
                    r(
                        T_DENY,
                        match={"query": {"debug": "1"}, "destinationLabels": {"plane": "chain"}},
                    )
                ],
            )
        ],
        request={"query": {"debug": "1"}},
    ),
    Case(
        "traffic-policy-for-another-source",
        ("allow", 0, ["blockchain-core"]),
        traffic=[tp("t", [r(T_DENY)], source="tron-*")],
    ),
    Case(
        "security-deny-stops-before-traffic",
        ("deny", 403, []),
        [sec("d", [r(DENY)])],
        [tp("t", [r(REDIRECT, **to("tron-wallet"))])],
    ),
    # --- shadow mode -----------------------------------------------------------------------------
    Case(
        "shadow-deny-differs",
        ("allow", 0, ["blockchain-core"]),
        [sec("d", [r(DENY)], **SHADOW)],
        shadow=("deny", 403, []),
    ),
    Case(
        "shadow-allow-would-close-the-destination",
        ("allow", 0, ["blockchain-core"]),
        [sec("gw", [r(ALLOW)], source="api-gateway", **SHADOW)],
        request={"source": WALLET},
        shadow=("deny", 403, []),
    ),
    Case(
        "shadow-requirement-differs",
        ("allow", 0, ["blockchain-core"]),
        [sec("auth", [r(AUTH)], **SHADOW)],
        shadow=("deny", 401, []),
    ),
    Case(
        "shadow-same-decision-not-reported",
        ("deny", 403, []),
        [sec("d", [r(DENY)]), sec("d2", [r(DENY)], **SHADOW)],
    ),
    Case(
        "shadow-traffic-redirect-differs",
        ("allow", 0, ["blockchain-core"]),
        traffic=[
            tp("t", [r(REDIRECT, **to("tron-wallet"))], priority=900, **SHADOW),
            tp("base", [r(T_ALLOW)]),
        ],
        shadow=("redirect", 0, ["tron-wallet"]),
    ),
    Case(
        "shadow-policy-not-matching-reports-nothing",
        ("allow", 0, ["blockchain-core"]),
        traffic=[tp("t", [r(T_DENY)], source="tron-*", **SHADOW)],
    ),
]


def run(case: Case, draw: float | None = None) -> tuple[Any, MeshConfig]:
    config = MeshConfig.compile(case.traffic, case.security, deny_all=case.deny_all)
    request = (
        Request(GW, CORE)
        if not case.request
        else Request(**{"source": GW, "destination": CORE} | case.request)
    )
    return decide(request, config, draw=draw), config


def summary(v: Any) -> tuple[str, int, list[str]]:
    return wire(v.decision), v.http_status, [t.service for t in v.targets]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_combining_order(case: Case) -> None:
    result, _ = run(case)
    assert summary(result.verdict) == case.expect, result.verdict.summary
    if case.shadow is None:
        assert result.shadow is None
    else:
        assert result.shadow is not None
        assert summary(result.shadow) == case.shadow
    if case.decided_by is not None:
        won = [
            e
            for e in result.verdict.trace
            if e.outcome == pb.TRACE_OUTCOME_WON and e.policy and not e.policy.shadow
        ]
        assert f"{won[-1].policy.name.removeprefix('p-')}/{won[-1].rule_index}" == case.decided_by


def test_the_trace_says_why_each_matched_rule_won_or_lost() -> None:
    config = MeshConfig.compile(
        security=[
            sec("low", [r(DENY)], priority=50),
            sec("allow-a", [r(ALLOW)], priority=300),
            sec("deny-b", [r(DENY)], priority=300),
            sec("m", [r(MTLS)], priority=1),
        ]
    )
    result = decide(Request(GW, CORE, peer_mtls_valid=True), config)
    trace = [
        (
            e.policy.name.removeprefix("p-") if e.policy else "",
            pb.TraceOutcome.Name(e.outcome),
            e.reason,
        )
        for e in result.verdict.trace
    ]
    assert trace == [
        ("m", "TRACE_OUTCOME_HELD", "held"),
        (
            "allow-a",
            "TRACE_OUTCOME_LOST",
            "deny wins ties at priority 300 (default/p-deny-b rule 0)",
        ),
        ("deny-b", "TRACE_OUTCOME_WON", "highest priority (300); deny wins ties"),
        ("low", "TRACE_OUTCOME_LOST", "priority 50 < 300 of default/p-deny-b rule 0"),
    ]
    assert result.verdict.summary == "denied by default/p-deny-b rule 0 (priority 300)"


def test_traffic_trace_lists_rules_that_lost_to_the_first_match() -> None:
    config = MeshConfig.compile(
        traffic=[tp("high", [r(T_ALLOW)], priority=500), tp("low", [r(T_DENY)], priority=5)]
    )
    trace = decide(Request(GW, CORE), config).verdict.trace
    assert [(e.stage, e.outcome, e.policy.name[2:] if e.policy else "") for e in trace] == [
        (pb.TRACE_STAGE_SECURITY_DEFAULT, pb.TRACE_OUTCOME_WON, ""),
        (pb.TRACE_STAGE_TRAFFIC, pb.TRACE_OUTCOME_WON, "high"),
        (pb.TRACE_STAGE_TRAFFIC, pb.TRACE_OUTCOME_LOST, "low"),
    ]
    assert trace[2].reason == "default/p-high rule 0 decided first"


def test_mirror_percent_defaults_to_100_and_roles_are_set() -> None:
    config = MeshConfig.compile(traffic=[tp("t", [r(MIRROR, **to("tron-wallet"))])])
    primary, mirror = decide(Request(GW, CORE), config).verdict.targets
    assert (primary.role, primary.weight) == (pb.TARGET_ROLE_PRIMARY, 100)
    assert (mirror.role, mirror.percent) == (pb.TARGET_ROLE_MIRROR, 100.0)


SPLIT_POLICY = tp(
    "split",
    [
        r(T_DENY, match={"path": "/admin"}),
        r(SPLIT, weight=70, **to("blockchain-core")),
        r(SPLIT, weight=0, **to("tron-vault")),
        r(SPLIT, weight=30, **to("tron-wallet")),
        r(SPLIT, weight=100, match={"path": "/v2/*"}, **to("tron-wallet")),
    ],
)


@pytest.mark.parametrize(
    ("draw", "chosen"),
    [
        (None, None),
        (0.0, "blockchain-core"),
        (0.6999, "blockchain-core"),
        (0.7, "tron-wallet"),
        (0.9999, "tron-wallet"),
    ],
)
def test_weighted_split_choice_is_deterministic_given_the_draw(
    draw: float | None, chosen: str | None
) -> None:
    config = MeshConfig.compile(traffic=[SPLIT_POLICY])
    targets = decide(Request(GW, CORE, path="/x"), config, draw=draw).verdict.targets
    # The split is the catch-all group (rules 1..3), not rule 4's other match.
    assert [(t.service, t.weight) for t in targets] == [
        ("blockchain-core", 70),
        ("tron-vault", 0),
        ("tron-wallet", 30),
    ]
    assert [t.service for t in targets if t.chosen] == ([chosen] if chosen else [])


def test_split_members_are_reported_as_branches() -> None:
    config = MeshConfig.compile(traffic=[SPLIT_POLICY])
    trace = decide(Request(GW, CORE, path="/x"), config).verdict.trace
    traffic = [(e.rule_index, e.outcome) for e in trace if e.stage == pb.TRACE_STAGE_TRAFFIC]
    assert traffic == [
        (1, pb.TRACE_OUTCOME_WON),
        (2, pb.TRACE_OUTCOME_WON),
        (3, pb.TRACE_OUTCOME_WON),
    ]


def test_request_from_explain_request_and_the_response_carries_settings() -> None:
    req = json_format.ParseDict(
        {
            "source": {
                "name": "api-gateway",
                "cluster": "CLUSTER_API_GATEWAY",
                "plane": "PLANE_OPS",
            },
            "destination": {"name": "blockchain-core", "plane": "PLANE_CHAIN"},
            "method": "POST",
            "path": "/tx",
            "headers": {"X-Trace": "on"},
            "claims": {"subject": "alice", "roles": ["admin"], "other": {"tier": "gold"}},
            "peerMtlsValid": True,
        },
        pb.ExplainRequest(),
    )
    request = Request.from_proto(req)
    assert request.source == GW
    assert request.destination == Workload("blockchain-core", "", "chain")
    assert request.headers == {"x-trace": "on"}
    assert request.claims is not None and request.claims.as_dict()["tier"] == "gold"
    breaker = pb.CircuitBreakerConfig(failure_threshold=5, recovery_timeout=30)
    retry = pb.RetryConfig(max_attempts=2)
    config = MeshConfig.compile(
        traffic=[
            tp("t", [r(MIRROR, **to("tron-wallet", percent=10))]),
            tp("s", [r(T_DENY)], **SHADOW),
        ],
        destinations={
            "blockchain-core": pb.DestinationSettings(circuit_breaker=breaker, retry=retry),
        },
    )
    response = to_explain_response(decide(request, config), config, revision=42)
    data = json_format.MessageToDict(response)
    assert data["revision"] == "42"
    assert data["verdict"]["decision"] == "DECISION_MIRROR"
    primary, mirror = response.verdict.targets
    assert primary.settings.circuit_breaker.failure_threshold == 5
    assert primary.settings.retry.max_attempts == 2
    assert not mirror.HasField("settings")
    assert mirror.percent == 10.0
    assert response.shadow.decision == pb.DECISION_DENY
    assert response.shadow.http_status == 403
    entry, shadow_entry = response.verdict.trace[-2:]
    assert (entry.policy, entry.namespace, entry.mode, entry.action) == (
        "p-t",
        "default",
        pb.POLICY_MODE_ENFORCE,
        "mirror",
    )
    # The shadow deny is in the verdict's trace too, as what it would have done.
    assert (shadow_entry.policy, shadow_entry.mode, shadow_entry.outcome) == (
        "p-s",
        pb.POLICY_MODE_SHADOW,
        pb.TRACE_OUTCOME_WON,
    )
    assert response.shadow.trace[-2].mode == pb.POLICY_MODE_SHADOW


def _entries(trace: Any) -> list[tuple[str, str, bool, str]]:
    return [
        (
            e.policy.name.removeprefix("p-") if e.policy else "",
            pb.TraceOutcome.Name(e.outcome).removeprefix("TRACE_OUTCOME_"),
            bool(e.policy and e.policy.shadow),
            e.reason,
        )
        for e in trace
    ]


def test_a_matched_shadow_policy_that_agrees_is_in_the_trace() -> None:
    config = MeshConfig.compile(
        security=[sec("d", [r(DENY)], priority=200), sec("d2", [r(DENY)], **SHADOW)],
        traffic=[tp("t", [r(T_DENY)], source="tron-*", **SHADOW)],  # does not match: absent
    )
    result = decide(Request(GW, CORE), config)
    assert result.shadow is None  # it agrees: no shadow verdict
    assert summary(result.verdict) == ("deny", 403, [])
    assert _entries(result.verdict.trace) == [
        ("d", "WON", False, "highest priority (200)"),
        (
            "d2",
            "LOST",
            True,
            "shadow, would have: priority 100 < 200 of default/p-d rule 0",
        ),
    ]


def test_shadow_entries_keep_evaluation_order_and_the_decision() -> None:
    config = MeshConfig.compile(
        security=[sec("auth", [r(AUTH)], **SHADOW), sec("a", [r(ALLOW)])],
        traffic=[
            tp("base", [r(T_ALLOW)]),
            tp("canary", [r(REDIRECT, **to("tron-wallet"))], **SHADOW),
        ],
    )
    result = decide(Request(GW, CORE, claims=USER), config)
    assert summary(result.verdict) == ("allow", 0, ["blockchain-core"])
    trace = result.verdict.trace
    assert [(e.stage, e.policy.name[2:] if e.policy else "", e.outcome) for e in trace] == [
        (pb.TRACE_STAGE_SECURITY_REQUIREMENT, "auth", pb.TRACE_OUTCOME_HELD),
        (pb.TRACE_STAGE_SECURITY_ACCESS, "a", pb.TRACE_OUTCOME_WON),
        (pb.TRACE_STAGE_TRAFFIC, "base", pb.TRACE_OUTCOME_WON),
        # canary sorts after base by name at equal priority: it would have lost.
        (pb.TRACE_STAGE_TRAFFIC, "canary", pb.TRACE_OUTCOME_LOST),
    ]
    assert result.shadow is None


def test_non_finite_claims_never_raise() -> None:
    """A stored NaN (written before validation refused them) must not break decisions."""
    rule = sec("auth", [r(AUTH)])
    rule.rules[0].authentication.jwt.required_claims.update({"x": float("nan")})
    config = MeshConfig.compile(security=[rule])
    claims = Claims("alice", other={"x": float("inf")})
    result = decide(Request(GW, CORE, claims=claims), config)
    assert summary(result.verdict) == ("deny", 401, [])
    assert "claim 'x'" in result.verdict.summary
    explain = pb.ExplainRequest(claims=pb.Claims(subject="alice"))
    explain.claims.other.update({"y": float("nan")})
    assert Request.from_proto(explain).claims is not None


def test_targets_go_through_the_single_service_parse() -> None:
    """A target stored with spaces (before write-time canonicalization) is the service itself,
    and its circuit breaker is found."""
    policy = tp("t", [r(REDIRECT, **to(" chain-v2 "))])
    breaker = pb.CircuitBreakerConfig(failure_threshold=5, recovery_timeout=30)
    config = MeshConfig.compile(
        traffic=[policy], destinations={"chain-v2": pb.DestinationSettings(circuit_breaker=breaker)}
    )
    response = to_explain_response(decide(Request(GW, CORE), config), config)
    [target] = response.verdict.targets
    assert target.service == "chain-v2"
    assert target.settings.circuit_breaker.failure_threshold == 5


# --- the sources' retry and timeout settings (MeshConfig.outbound) ------------------------------

OUT_RETRY = pb.RetryConfig(max_attempts=4)
OUT_TIMEOUT = pb.TimeoutConfig(request=2000)


def _outbound(source: str, destination: str) -> tuple[Any, Any]:
    """api-gateway retries blockchain-core and times out tron-wallet; nothing else."""
    table = {
        ("api-gateway", "blockchain-core"): (OUT_RETRY, None),
        ("api-gateway", "tron-wallet"): (None, OUT_TIMEOUT),
    }
    return table.get((source, destination), (None, None))


def test_targets_carry_the_retry_and_timeout_their_source_applies() -> None:
    breaker = pb.CircuitBreakerConfig(failure_threshold=5, recovery_timeout=30)
    config = MeshConfig.compile(
        traffic=[tp("t", [r(MIRROR, **to("tron-wallet", percent=10))])],
        destinations={
            "blockchain-core": pb.DestinationSettings(
                circuit_breaker=breaker, retry=pb.RetryConfig(max_attempts=9)
            )
        },
        outbound=_outbound,
    )
    response = to_explain_response(decide(Request(GW, CORE), config), config)
    primary, mirror = response.verdict.targets
    # The destination's breaker stays; the source's retry replaces the destination's.
    assert primary.settings == pb.DestinationSettings(circuit_breaker=breaker, retry=OUT_RETRY)
    assert mirror.settings == pb.DestinationSettings(timeout=OUT_TIMEOUT)
    # Another source applies none: only the destination's own settings.
    other = decide(Request(WALLET, CORE), config)
    primary, mirror = to_explain_response(other, config).verdict.targets
    assert primary.settings.retry.max_attempts == 9
    assert not mirror.HasField("settings")


def test_shadow_targets_carry_the_source_settings_too() -> None:
    config = MeshConfig.compile(
        traffic=[tp("canary", [r(REDIRECT, **to("tron-wallet"))], **SHADOW)], outbound=_outbound
    )
    response = to_explain_response(decide(Request(GW, CORE), config), config)
    assert response.verdict.targets[0].settings.retry == OUT_RETRY
    [redirected] = response.shadow.targets
    assert (redirected.service, redirected.settings.timeout) == ("tron-wallet", OUT_TIMEOUT)


def test_settings_without_any_are_none() -> None:
    config = MeshConfig.compile(outbound=_outbound)
    assert config.settings("tron-wallet", "blockchain-core") is None
    assert config.settings("api-gateway", "blockchain-core") == pb.DestinationSettings(
        retry=OUT_RETRY
    )
