"""Write-time errors and warnings of mesh resources (lucid_cp.mesh.checks)."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format

from lucid_cp.api.lucid.mesh.v1 import mesh_pb2 as pb
from lucid_cp.errors import FieldViolation
from lucid_cp.mesh import checks
from lucid_cp.mesh.selectors import Workload
from lucid_cp.validation import normalize

SERVICES = [
    Workload("api-gateway", "api-gateway", "ops"),
    Workload("blockchain-core", "blockchain-core", "chain"),
    Workload("tron-payout", "tron-payment", "wallet"),
]


def traffic(rules: list[dict[str, Any]], **over: Any) -> pb.TrafficPolicy:
    data = {"name": "p-one", "source": "api-gateway", "destination": "blockchain-core"}
    policy = json_format.ParseDict(data | {"rules": rules} | over, pb.TrafficPolicy())
    assert normalize(policy) == []
    return policy


def security(rules: list[dict[str, Any]], **over: Any) -> pb.SecurityPolicy:
    data = {"name": "s-one", "source": "api-gateway", "destination": "blockchain-core"}
    policy = json_format.ParseDict(data | {"rules": rules} | over, pb.SecurityPolicy())
    assert normalize(policy) == []
    return policy


ALLOW = {"action": "TRAFFIC_ACTION_ALLOW"}
DENY_ADMIN = {"action": "TRAFFIC_ACTION_DENY", "match": {"path": "/admin/*"}}


def split(dest: str, weight: int, path: str = "") -> dict[str, Any]:
    rule: dict[str, Any] = {
        "action": "TRAFFIC_ACTION_WEIGHTED_SPLIT",
        "parameters": {"destination": dest},
        "weight": weight,
    }
    if path:
        rule["match"] = {"path": path}
    return rule


def fields(violations: list[FieldViolation]) -> list[str]:
    return [v.field for v in violations]


# --- errors -------------------------------------------------------------------------------------


def test_a_valid_traffic_policy_has_no_errors() -> None:
    policy = traffic([DENY_ADMIN, split("blockchain-core", 90), split("tron-payout", 10), ALLOW])
    assert checks.traffic_policy_errors(policy) == []


def test_selectors_outside_the_grammar_are_errors_with_the_prefix() -> None:
    policy = traffic([ALLOW], source="api gateway", destination="region=eu")
    errors = checks.traffic_policy_errors(policy, prefix="policy.")
    assert fields(errors) == ["policy.source", "policy.destination"]
    assert "space inside term 'api gateway'" in errors[0].description
    assert "unknown label 'region'" in errors[1].description


def test_weighted_split_weights_of_one_match_must_sum_to_100() -> None:
    policy = traffic(
        [
            split("blockchain-core", 50, "/a"),
            split("tron-payout", 40, "/a"),
            split("blockchain-core", 100, "/b"),  # another match: its own split
        ]
    )
    assert checks.traffic_policy_errors(policy) == [
        FieldViolation(
            "rules[0].weight",
            "weighted-split weights of one match must sum to 100, rules 0, 1 sum to 90",
        )
    ]


@pytest.mark.parametrize("action", ["TRAFFIC_ACTION_REDIRECT", "TRAFFIC_ACTION_MIRROR"])
@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("tron-*", "must name one service exactly"),
        ("plane=ops", "must name one service exactly"),
        ("http://x", "unknown selector term"),
        ("*,*", "more than one service name term"),
    ],
)
def test_a_redirect_or_mirror_to_an_unknown_selector_form_is_an_error(
    action: str, target: str, message: str
) -> None:
    policy = traffic([{"action": action, "parameters": {"destination": target}}])
    (error,) = checks.traffic_policy_errors(policy)
    assert error.field == "rules[0].parameters.destination"
    assert message in error.description


def test_a_target_is_required_and_a_mirror_percent_is_a_percentage() -> None:
    policy = traffic(
        [
            {"action": "TRAFFIC_ACTION_REDIRECT", "parameters": {"other": 1}},
            {
                "action": "TRAFFIC_ACTION_MIRROR",
                "parameters": {"destination": "x-y", "percent": 101},
            },
            {"action": "TRAFFIC_ACTION_MIRROR", "parameters": {"destination": "x-y", "percent": 0}},
        ]
    )
    assert checks.traffic_policy_errors(policy) == [
        FieldViolation("rules[0].parameters.destination", "is required for redirect"),
        FieldViolation("rules[1].parameters.percent", "must be within 0..100"),
    ]


def test_unknown_labels_in_a_match_are_errors() -> None:
    policy = traffic(
        [
            {
                "action": "TRAFFIC_ACTION_DENY",
                "match": {
                    "sourceLabels": {"zone": "a"},
                    "destinationLabels": {"plane": "moon"},
                },
            }
        ]
    )
    assert fields(checks.traffic_policy_errors(policy)) == [
        "rules[0].match.sourceLabels.zone",
        "rules[0].match.destinationLabels.plane",
    ]


def test_security_policy_errors() -> None:
    ok = security(
        [{"action": "SECURITY_ACTION_REQUIRE_ROLE", "authorization": {"roles": ["admin"]}}]
    )
    assert checks.security_policy_errors(ok) == []
    bad = security(
        [
            {"action": "SECURITY_ACTION_REQUIRE_ROLE", "authorization": {"permissions": ["x"]}},
            {"action": "SECURITY_ACTION_DENY", "match": {"sourceLabels": {"cluster": "mars"}}},
        ],
        destination="tron-**",
    )
    assert checks.security_policy_errors(bad, "policy.") == [
        FieldViolation("policy.destination", checks.security_policy_errors(bad)[0].description),
        FieldViolation(
            "policy.rules[0].authorization.roles", "is required when action is require-role"
        ),
        FieldViolation("policy.rules[1].match.sourceLabels.cluster", "unknown cluster 'mars'"),
    ]


def test_circuit_breaker_half_open_calls_must_allow_closing() -> None:
    cfg = pb.CircuitBreakerConfig(failure_threshold=5, recovery_timeout=30)
    assert normalize(cfg) == []
    assert checks.circuit_breaker_errors(cfg) == []  # defaults: 3 >= 3
    cfg.half_open_max_calls = 2
    assert checks.circuit_breaker_errors(cfg, "config.") == [
        FieldViolation(
            "config.halfOpenMaxCalls",
            "must be >= successThreshold (3): a half-open circuit could never close",
        )
    ]


def test_retry_max_delay_must_not_be_below_the_initial_delay() -> None:
    cfg = pb.RetryConfig(max_attempts=3, initial_delay=5000, max_delay=5000)
    assert checks.retry_errors(cfg) == []
    cfg.max_delay = 4999
    assert checks.retry_errors(cfg) == [
        FieldViolation("maxDelay", "must be >= initialDelay (5000)")
    ]


# --- warnings -----------------------------------------------------------------------------------


def codes(warnings: list[checks.Warning]) -> list[tuple[int, str]]:
    return [(w.code, w.field) for w in warnings]


SHADOWED = pb.WARNING_CODE_SHADOWED_RULE
TIE = pb.WARNING_CODE_ALLOW_DENY_TIE
UNMATCHED = pb.WARNING_CODE_UNMATCHED_SELECTOR


def test_no_warnings_for_a_plain_policy() -> None:
    assert checks.traffic_policy_warnings(traffic([DENY_ADMIN, ALLOW]), [], SERVICES) == []


def test_selectors_matching_no_registered_service() -> None:
    policy = traffic(
        [{"action": "TRAFFIC_ACTION_MIRROR", "parameters": {"destination": "ghost-svc"}}],
        source="plane=wallet,api-*",
    )
    warnings = checks.traffic_policy_warnings(policy, [], SERVICES)
    assert codes(warnings) == [
        (UNMATCHED, "source"),
        (UNMATCHED, "rules[0].parameters.destination"),
    ]
    assert warnings[0].message == "'plane=wallet,api-*' matches no registered service"
    assert warnings[0].to_proto().code == UNMATCHED
    # Nothing registered: every selector is unmatched, even "*".
    assert codes(checks.traffic_policy_warnings(traffic([ALLOW], source="*"), [], [])) == [
        (UNMATCHED, "source"),
        (UNMATCHED, "destination"),
    ]


def test_a_rule_after_a_catch_all_in_the_same_policy_is_shadowed() -> None:
    policy = traffic([DENY_ADMIN, ALLOW, {"action": "TRAFFIC_ACTION_DENY"}])
    assert codes(checks.traffic_policy_warnings(policy, [], SERVICES)) == [(SHADOWED, "rules[2]")]


def test_members_of_a_catch_all_split_are_not_shadowed_by_each_other() -> None:
    policy = traffic([split("blockchain-core", 50), split("tron-payout", 50), ALLOW])
    assert codes(checks.traffic_policy_warnings(policy, [], SERVICES)) == [(SHADOWED, "rules[2]")]


def test_a_higher_priority_covering_catch_all_shadows_a_policy_both_ways() -> None:
    low = traffic([DENY_ADMIN], priority=50)
    high = traffic([ALLOW], name="catch-all", source="*", destination="*", priority=500)
    assert codes(checks.traffic_policy_warnings(low, [high], SERVICES)) == [(SHADOWED, "rules")]
    assert (
        "default/catch-all (priority 500)"
        in checks.traffic_policy_warnings(low, [high], SERVICES)[0].message
    )
    # Writing the catch-all warns about the policy it now shadows.
    assert codes(checks.traffic_policy_warnings(high, [low], SERVICES)) == [(SHADOWED, "rules[0]")]


@pytest.mark.parametrize(
    ("over", "shadowed"),
    [
        ({"source": "tron-*"}, False),  # does not cover api-gateway
        ({"priority": 10}, False),  # decides later
        ({"enabled": False}, False),  # never evaluated
        ({"mode": "POLICY_MODE_SHADOW"}, False),  # never decides for enforcing policies
        ({"source": "api-*"}, True),
        ({"priority": 100, "name": "a-first"}, True),  # equal priority, earlier name
        ({"priority": 100, "name": "z-last"}, False),
    ],
)
def test_cross_policy_shadowing_conditions(over: dict[str, Any], shadowed: bool) -> None:
    policy = traffic([DENY_ADMIN], name="p-mid")
    other = traffic([ALLOW], **{"name": "other", "priority": 500} | over)
    warned = codes(checks.traffic_policy_warnings(policy, [other], SERVICES)) != []
    assert warned is shadowed


def test_a_shadow_policy_can_be_shadowed_by_a_shadow_policy() -> None:
    policy = traffic([DENY_ADMIN], mode="POLICY_MODE_SHADOW")
    other = traffic([ALLOW], name="other", priority=500, mode="POLICY_MODE_SHADOW")
    assert codes(checks.traffic_policy_warnings(policy, [other], SERVICES)) == [(SHADOWED, "rules")]


def test_the_stored_version_of_the_written_policy_is_ignored() -> None:
    old = traffic([ALLOW], priority=900)
    new = traffic([DENY_ADMIN], priority=10)
    assert checks.traffic_policy_warnings(new, [old], SERVICES) == []


SEC_ALLOW = {"action": "SECURITY_ACTION_ALLOW"}
SEC_DENY = {"action": "SECURITY_ACTION_DENY"}


def test_allow_and_deny_for_the_same_source_and_destination_at_the_same_priority() -> None:
    allow = security([SEC_ALLOW])
    deny = security([SEC_DENY], name="s-two", source=" api-gateway ")
    warnings = checks.security_policy_warnings(allow, [deny], SERVICES)
    assert codes(warnings) == [(TIE, "rules[0]")]
    assert warnings[0].message.endswith("(with policy default/s-two rule 0): deny wins")
    other_priority = security([SEC_DENY], name="s-two", priority=99)
    # No tie at another priority (the allow catch-all at 100 now shadows the deny at 99).
    assert codes(checks.security_policy_warnings(allow, [other_priority], SERVICES)) == [
        (SHADOWED, "rules[0]")
    ]


def test_allow_and_deny_with_equal_matches_in_one_policy() -> None:
    both = security([SEC_ALLOW, {"action": "SECURITY_ACTION_REQUIRE_MTLS"}, SEC_DENY])
    assert codes(checks.security_policy_warnings(both, [], SERVICES)) == [(TIE, "rules[0]")]
    # Deny /admin, allow the rest: the usual pattern, not a tie.
    usual = security([{**SEC_DENY, "match": {"path": "/admin/*"}}, SEC_ALLOW])
    assert checks.security_policy_warnings(usual, [], SERVICES) == []


def test_security_shadowing_concerns_allow_and_deny_only() -> None:
    low = security([{**SEC_ALLOW, "match": {"method": "GET"}}], priority=10)
    high = security([SEC_DENY], name="lockdown", source="*", priority=900)
    assert codes(checks.security_policy_warnings(low, [high], SERVICES)) == [(SHADOWED, "rules")]
    requirement = security([{"action": "SECURITY_ACTION_REQUIRE_MTLS"}], priority=10)
    assert checks.security_policy_warnings(requirement, [high], SERVICES) == []


def test_across_policies_a_tie_needs_the_same_match_too() -> None:
    allow = security([SEC_ALLOW])
    deny_admin = security([{**SEC_DENY, "match": {"path": "/admin/*"}}], name="s-two")
    # Deny /admin in another policy, allow the rest: no tie, as inside one policy.
    assert checks.security_policy_warnings(allow, [deny_admin], SERVICES) == []
    allow_admin = security([{**SEC_ALLOW, "match": {"path": "/admin/*"}}])
    assert codes(checks.security_policy_warnings(allow_admin, [deny_admin], SERVICES)) == [
        (TIE, "rules[0]")
    ]


def test_a_disabled_policy_gets_only_unmatched_selector_warnings() -> None:
    deny = security([SEC_DENY], name="s-two")
    lockdown = security([SEC_DENY], name="lockdown", source="*", priority=900)
    allow = security([SEC_ALLOW], enabled=False, destination="nowhere-svc")
    assert codes(checks.security_policy_warnings(allow, [deny, lockdown], SERVICES)) == [
        (pb.WARNING_CODE_UNMATCHED_SELECTOR, "destination")
    ]
    catch_all = traffic([ALLOW, DENY_ADMIN], enabled=False)
    higher = traffic([ALLOW], name="p-two", source="*", priority=900)
    assert checks.traffic_policy_warnings(catch_all, [higher], SERVICES) == []


def test_canonicalize_rewrites_selectors_and_targets() -> None:
    policy = traffic(
        [{"action": "TRAFFIC_ACTION_REDIRECT", "parameters": {"destination": " chain-v2 "}}],
        source=" plane=ops , api-* ",
        destination="*,cluster=blockchain-core",
    )
    assert checks.traffic_policy_errors(policy) == []
    checks.canonicalize(policy)
    assert (policy.source, policy.destination) == ("api-*,plane=ops", "cluster=blockchain-core")
    assert policy.rules[0].parameters["destination"] == "chain-v2"
    sec = security([SEC_ALLOW], source=" api-gateway ")
    checks.canonicalize(sec)
    assert sec.source == "api-gateway"
