"""The generic validator (lucid_cp.validation.normalize) on mesh.proto's declared rules: every
message has valid and invalid cases, defaults are applied, cross-field rules fire."""

from __future__ import annotations

import pytest
from google.protobuf import json_format
from google.protobuf.message import Message

from lucid_cp.api.lucid.mesh.v1 import mesh_pb2 as pb
from lucid_cp.validation import (
    MAX_STRUCT_DEPTH,
    PROTOBUF_RECURSION_LIMIT,
    check_declarations,
    deepest_free_form,
    normalize,
)

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def parse(cls: type[Message], data: dict[str, object]) -> Message:
    return json_format.ParseDict(data, cls())


def traffic(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "name": "gw-to-chain",
        "source": "api-gateway",
        "destination": "blockchain-core",
        "rules": [{"action": "TRAFFIC_ACTION_ALLOW"}],
    }
    return base | over


def security(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "name": "gw-auth",
        "source": "*",
        "destination": "blockchain-core",
        "rules": [{"action": "SECURITY_ACTION_REQUIRE_AUTH"}],
    }
    return base | over


def violations(cls: type[Message], data: dict[str, object]) -> list[tuple[str, str]]:
    return [(v.field, v.description) for v in normalize(parse(cls, data))]


def nested(depth: int) -> dict[str, object]:
    value: dict[str, object] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_every_declared_rule_compiles() -> None:
    for message in pb.DESCRIPTOR.message_types_by_name.values():
        check_declarations(message)


def test_the_depth_limit_leaves_room_in_every_mesh_response() -> None:
    responses = [
        m for name, m in pb.DESCRIPTOR.message_types_by_name.items() if name.endswith("Response")
    ]
    assert len(responses) >= 5  # the four resource responses and ExplainResponse
    for message in responses:
        k = deepest_free_form(message)
        assert k + 3 * MAX_STRUCT_DEPTH < PROTOBUF_RECURSION_LIMIT, message.full_name


# --- TrafficPolicy / TrafficRule / TrafficMatch -------------------------------------------------


def test_a_minimal_traffic_policy_is_valid_and_gets_its_defaults() -> None:
    policy = parse(pb.TrafficPolicy, traffic())
    assert normalize(policy) == []
    assert isinstance(policy, pb.TrafficPolicy)
    assert policy.priority == 100
    assert policy.enabled is True
    assert policy.namespace == "default"
    assert policy.mode == pb.POLICY_MODE_ENFORCE


def test_explicit_values_are_kept() -> None:
    policy = parse(
        pb.TrafficPolicy,
        traffic(priority=7, enabled=False, namespace="team-a", mode="POLICY_MODE_SHADOW"),
    )
    assert normalize(policy) == []
    assert isinstance(policy, pb.TrafficPolicy)
    assert (policy.priority, policy.enabled, policy.namespace) == (7, False, "team-a")
    assert policy.mode == pb.POLICY_MODE_SHADOW


def test_an_empty_traffic_policy_names_every_required_field() -> None:
    assert violations(pb.TrafficPolicy, {}) == [
        ("name", "is required"),
        ("source", "is required"),
        ("destination", "is required"),
        ("rules", "is required"),
    ]


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({"name": "Bad_Name"}, ("name", "must match ^[a-z0-9-]+$")),
        ({"name": "ab"}, ("name", "must be at least 3 characters")),
        ({"name": "a" * 51}, ("name", "must be at most 50 characters")),
        ({"source": "s" * 257}, ("source", "must be at most 256 characters")),
        ({"destination": "d" * 257}, ("destination", "must be at most 256 characters")),
        (
            {"rules": [{"action": "TRAFFIC_ACTION_ALLOW"}] * 101},
            ("rules", "must have at most 100 items"),
        ),
        ({"priority": 0}, ("priority", "must be >= 1")),
        ({"priority": 1001}, ("priority", "must be <= 1000")),
        ({"namespace": "Team"}, ("namespace", "must match ^[a-z0-9-]+$")),
        ({"labels": {f"k{i}": "v" for i in range(65)}}, ("labels", "must have at most 64 items")),
        ({"rules": [{}]}, ("rules[0].action", "is required")),
        ({"rules": [{"action": 9}]}, ("rules[0].action", "unknown TrafficAction value 9")),
        ({"mode": 7}, ("mode", "unknown PolicyMode value 7")),
        (
            {"rules": [{"action": "TRAFFIC_ACTION_ALLOW", "weight": 101}]},
            ("rules[0].weight", "must be <= 100"),
        ),
        (
            {"rules": [{"action": "TRAFFIC_ACTION_ALLOW", "match": {"path": "api"}}]},
            ("rules[0].match.path", "must match ^/[^\\s*]*\\*?$"),
        ),
        (
            {"rules": [{"action": "TRAFFIC_ACTION_ALLOW", "match": {"path": "/a*b"}}]},
            ("rules[0].match.path", "must match ^/[^\\s*]*\\*?$"),
        ),
        (
            {"rules": [{"action": "TRAFFIC_ACTION_ALLOW", "match": {"method": "get"}}]},
            ("rules[0].match.method", "must match ^[A-Z]{1,16}$"),
        ),
        (
            {
                "rules": [
                    {
                        "action": "TRAFFIC_ACTION_ALLOW",
                        "match": {"sourceLabels": {"cluster": "a", "plane": "b", "x": "c"}},
                    }
                ]
            },
            ("rules[0].match.sourceLabels", "must have at most 2 items"),
        ),
        (
            {"rules": [{"action": "TRAFFIC_ACTION_MIRROR", "parameters": {"destination": 3}}]},
            ("rules[0].parameters.destination", "must be a string"),
        ),
        (
            {
                "rules": [
                    {
                        "action": "TRAFFIC_ACTION_MIRROR",
                        "parameters": {"destination": "x", "percent": "5"},
                    }
                ]
            },
            ("rules[0].parameters.percent", "must be a number"),
        ),
        (
            {"rules": [{"action": "TRAFFIC_ACTION_MIRROR", "parameters": {"blob": "x" * 5000}}]},
            ("rules[0].parameters", "must be at most 4096 bytes serialized"),
        ),
        (
            {
                "rules": [
                    {"action": "TRAFFIC_ACTION_MIRROR", "parameters": nested(MAX_STRUCT_DEPTH + 1)}
                ]
            },
            ("rules[0].parameters", f"must be nested at most {MAX_STRUCT_DEPTH} levels deep"),
        ),
    ],
)
def test_traffic_policy_rules(over: dict[str, object], expected: tuple[str, str]) -> None:
    assert violations(pb.TrafficPolicy, traffic(**over)) == [expected]


@pytest.mark.parametrize(
    ("action", "missing"),
    [
        ("TRAFFIC_ACTION_REDIRECT", ["parameters"]),
        ("TRAFFIC_ACTION_MIRROR", ["parameters"]),
        ("TRAFFIC_ACTION_WEIGHTED_SPLIT", ["parameters", "weight"]),
    ],
)
def test_actions_with_targets_require_parameters_and_splits_a_weight(
    action: str, missing: list[str]
) -> None:
    wire = {"TRAFFIC_ACTION_REDIRECT": "redirect", "TRAFFIC_ACTION_MIRROR": "mirror"}.get(
        action, "weighted-split"
    )
    assert violations(pb.TrafficPolicy, traffic(rules=[{"action": action}])) == [
        (f"rules[0].{m}", f"is required when action is {wire}") for m in missing
    ]
    ok = {"action": action, "parameters": {"destination": "x"}, "weight": 100}
    assert violations(pb.TrafficPolicy, traffic(rules=[ok])) == []


def test_a_weight_of_zero_counts_as_given() -> None:
    rule = {
        "action": "TRAFFIC_ACTION_WEIGHTED_SPLIT",
        "parameters": {"destination": "x"},
        "weight": 0,
    }
    assert violations(pb.TrafficPolicy, traffic(rules=[rule])) == []


def test_create_traffic_policy_request_paths_are_prefixed() -> None:
    req = parse(pb.CreateTrafficPolicyRequest, {"policy": traffic(priority=0)})
    assert [v.field for v in normalize(req)] == ["policy.priority"]
    assert violations(pb.CreateTrafficPolicyRequest, {}) == [("policy", "is required")]


# --- CircuitBreakerConfig, RetryConfig, TimeoutConfig ------------------------------------------


def test_circuit_breaker_defaults() -> None:
    cfg = parse(pb.CircuitBreakerConfig, {"failureThreshold": 5, "recoveryTimeout": 30})
    assert normalize(cfg) == []
    assert isinstance(cfg, pb.CircuitBreakerConfig)
    assert (cfg.half_open_max_calls, cfg.success_threshold, cfg.timeout) == (3, 3, 5000)
    assert list(cfg.error_types) == [
        pb.FAILURE_KIND_5XX,
        pb.FAILURE_KIND_TIMEOUT,
        pb.FAILURE_KIND_CONNECTION_ERROR,
    ]


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({"failureThreshold": 0}, ("failureThreshold", "must be >= 1")),
        ({"failureThreshold": 101}, ("failureThreshold", "must be <= 100")),
        ({"recoveryTimeout": 3601}, ("recoveryTimeout", "must be <= 3600")),
        ({"halfOpenMaxCalls": 0}, ("halfOpenMaxCalls", "must be >= 1")),
        ({"successThreshold": 101}, ("successThreshold", "must be <= 100")),
        ({"timeout": 99}, ("timeout", "must be >= 100")),
        ({"timeout": 30001}, ("timeout", "must be <= 30000")),
        ({"errorTypes": [9]}, ("errorTypes[0]", "unknown FailureKind value 9")),
        ({"errorTypes": ["FAILURE_KIND_5XX"] * 5}, ("errorTypes", "must have at most 4 items")),
    ],
)
def test_circuit_breaker_rules(over: dict[str, object], expected: tuple[str, str]) -> None:
    data: dict[str, object] = {"failureThreshold": 5, "recoveryTimeout": 30} | over
    assert violations(pb.CircuitBreakerConfig, data) == [expected]


def test_circuit_breaker_required_fields() -> None:
    assert violations(pb.CircuitBreakerConfig, {}) == [
        ("failureThreshold", "is required"),
        ("recoveryTimeout", "is required"),
    ]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, [("serviceName", "is required"), ("config", "is required")]),
        (
            {"serviceName": "Bad", "config": {"failureThreshold": 1, "recoveryTimeout": 1}},
            [("serviceName", "must match ^[a-z0-9-]+$")],
        ),
        (
            {
                "serviceName": "svc",
                "config": {"failureThreshold": 1, "recoveryTimeout": 1},
                "expectedRevision": 0,
            },
            [("expectedRevision", "must be >= 1")],
        ),
    ],
)
def test_update_circuit_breaker_request(
    data: dict[str, object], expected: list[tuple[str, str]]
) -> None:
    assert violations(pb.UpdateCircuitBreakerRequest, data) == expected


def test_retry_defaults_and_rules() -> None:
    cfg = parse(pb.RetryConfig, {"maxAttempts": 3})
    assert normalize(cfg) == []
    assert isinstance(cfg, pb.RetryConfig)
    assert (cfg.initial_delay, cfg.max_delay, cfg.backoff_multiplier) == (1000, 10000, 2.0)
    assert len(cfg.retryable_errors) == 3
    assert violations(pb.RetryConfig, {}) == [("maxAttempts", "is required")]
    bad = {
        "maxAttempts": 11,
        "initialDelay": 99,
        "maxDelay": 60001,
        "backoffMultiplier": 0.5,
        "retryableErrors": [8],
    }
    assert violations(pb.RetryConfig, bad) == [
        ("maxAttempts", "must be <= 10"),
        ("initialDelay", "must be >= 100"),
        ("maxDelay", "must be <= 60000"),
        ("backoffMultiplier", "must be >= 1"),
        ("retryableErrors[0]", "unknown FailureKind value 8"),
    ]


def test_timeout_defaults_and_rules() -> None:
    cfg = parse(pb.TimeoutConfig, {})
    assert normalize(cfg) == []
    assert isinstance(cfg, pb.TimeoutConfig)
    assert (cfg.connect, cfg.request, cfg.response, cfg.idle) == (5000, 30000, 30000, 60000)
    bad = {"connect": 99, "request": 300001, "response": 999, "idle": 300001}
    assert violations(pb.TimeoutConfig, bad) == [
        ("connect", "must be >= 100"),
        ("request", "must be <= 300000"),
        ("response", "must be >= 1000"),
        ("idle", "must be <= 300000"),
    ]


# --- SecurityPolicy / SecurityRule ---------------------------------------------------------------


def test_a_minimal_security_policy_is_valid_and_gets_its_defaults() -> None:
    policy = parse(pb.SecurityPolicy, security())
    assert normalize(policy) == []
    assert isinstance(policy, pb.SecurityPolicy)
    assert (policy.priority, policy.enabled, policy.namespace) == (100, True, "default")
    assert policy.mode == pb.POLICY_MODE_ENFORCE


def test_authentication_required_defaults_to_true() -> None:
    policy = parse(
        pb.SecurityPolicy,
        security(rules=[{"action": "SECURITY_ACTION_REQUIRE_AUTH", "authentication": {}}]),
    )
    assert normalize(policy) == []
    assert isinstance(policy, pb.SecurityPolicy)
    assert policy.rules[0].authentication.required is True


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({"name": "x"}, ("name", "must be at least 3 characters")),
        ({"priority": 2000}, ("priority", "must be <= 1000")),
        ({"rules": []}, ("rules", "is required")),
        ({"rules": [{}]}, ("rules[0].action", "is required")),
        ({"mode": 3}, ("mode", "unknown PolicyMode value 3")),
        (
            {"rules": [{"action": "SECURITY_ACTION_REQUIRE_ROLE"}]},
            ("rules[0].authorization", "is required when action is require-role"),
        ),
        (
            {
                "rules": [
                    {
                        "action": "SECURITY_ACTION_REQUIRE_ROLE",
                        "authorization": {"roles": ["has space"]},
                    }
                ]
            },
            ("rules[0].authorization.roles[0]", "must match ^[A-Za-z0-9_.:-]{1,100}$"),
        ),
        (
            {
                "rules": [
                    {
                        "action": "SECURITY_ACTION_ALLOW",
                        "authorization": {"permissions": ["p"] * 51},
                    }
                ]
            },
            ("rules[0].authorization.permissions", "must have at most 50 items"),
        ),
        (
            {
                "rules": [
                    {
                        "action": "SECURITY_ACTION_ALLOW",
                        "authorization": {"resourceAccess": {"x": "y" * 9000}},
                    }
                ]
            },
            ("rules[0].authorization.resourceAccess", "must be at most 8192 bytes serialized"),
        ),
        (
            {
                "rules": [
                    {
                        "action": "SECURITY_ACTION_REQUIRE_AUTH",
                        "authentication": {"methods": [5]},
                    }
                ]
            },
            ("rules[0].authentication.methods[0]", "unknown AuthMethod value 5"),
        ),
        (
            {
                "rules": [
                    {
                        "action": "SECURITY_ACTION_REQUIRE_AUTH",
                        "authentication": {"jwt": {"issuer": "i" * 257}},
                    }
                ]
            },
            ("rules[0].authentication.jwt.issuer", "must be at most 256 characters"),
        ),
        (
            {
                "rules": [
                    {
                        "action": "SECURITY_ACTION_REQUIRE_AUTH",
                        "authentication": {"jwt": {"requiredClaims": nested(21)}},
                    }
                ]
            },
            ("rules[0].authentication.jwt.requiredClaims", "must be nested at most 20 levels deep"),
        ),
        (
            {"rules": [{"action": "SECURITY_ACTION_DENY", "match": {"path": "no-slash"}}]},
            ("rules[0].match.path", "must match ^/[^\\s*]*\\*?$"),
        ),
        (
            {"rules": [{"action": "SECURITY_ACTION_DENY", "match": {"method": "Post"}}]},
            ("rules[0].match.method", "must match ^[A-Z]{1,16}$"),
        ),
    ],
)
def test_security_policy_rules(over: dict[str, object], expected: tuple[str, str]) -> None:
    assert violations(pb.SecurityPolicy, security(**over)) == [expected]


def test_create_security_policy_request() -> None:
    assert violations(pb.CreateSecurityPolicyRequest, {}) == [("policy", "is required")]
    req = {"policy": security(source="")}
    assert violations(pb.CreateSecurityPolicyRequest, req) == [("policy.source", "is required")]


# --- MTLSConfig ---------------------------------------------------------------------------------


def test_mtls_defaults_and_the_trust_anchor_rule() -> None:
    cfg = parse(pb.MTLSConfig, {"certAuthority": CA})
    assert normalize(cfg) == []
    assert isinstance(cfg, pb.MTLSConfig)
    assert cfg.mode == pb.MTLS_MODE_PERMISSIVE
    assert (cfg.workload_cert_ttl, cfg.min_tls_version) == (86400, pb.TLS_VERSION_1_2)
    # The default mode (permissive) needs a trust anchor; strict too; disabled does not.
    assert violations(pb.MTLSConfig, {}) == [
        ("certAuthority", "is required when mode is permissive")
    ]
    assert violations(pb.MTLSConfig, {"mode": "MTLS_MODE_STRICT"}) == [
        ("certAuthority", "is required when mode is strict")
    ]
    assert violations(pb.MTLSConfig, {"mode": "MTLS_MODE_DISABLED"}) == []


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({"workloadCertTtl": 3599}, ("workloadCertTtl", "must be >= 3600")),
        ({"workloadCertTtl": 7776001}, ("workloadCertTtl", "must be <= 7776000")),
        ({"minTlsVersion": 4}, ("minTlsVersion", "unknown TlsVersion value 4")),
        ({"certAuthority": "x" * 65537}, ("certAuthority", "must be at most 65536 characters")),
        ({"mode": 9}, ("mode", "unknown MtlsMode value 9")),
    ],
)
def test_mtls_rules(over: dict[str, object], expected: tuple[str, str]) -> None:
    data: dict[str, object] = {"certAuthority": CA} | over
    assert violations(pb.MTLSConfig, data) == [expected]


def test_update_mtls_request() -> None:
    assert violations(pb.UpdateMtlsRequest, {}) == [("config", "is required")]
    bad = {"config": {"certAuthority": CA}, "expectedRevision": -1}
    assert violations(pb.UpdateMtlsRequest, bad) == [("expectedRevision", "must be >= 1")]


# --- ExplainRequest -----------------------------------------------------------------------------


def test_an_explain_request_gets_method_and_path_defaults() -> None:
    req = parse(
        pb.ExplainRequest,
        {"source": {"name": "api-gateway"}, "destination": {"name": "blockchain-core"}},
    )
    assert normalize(req) == []
    assert isinstance(req, pb.ExplainRequest)
    assert (req.method, req.path) == ("GET", "/")


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({"source": {}}, ("source.name", "is required")),
        ({"destination": {"name": "Bad"}}, ("destination.name", "must match ^[a-z0-9-]+$")),
        (
            {"source": {"name": "abc", "cluster": 99}},
            ("source.cluster", "unknown Cluster value 99"),
        ),
        (
            {"destination": {"name": "abc", "plane": 9}},
            ("destination.plane", "unknown Plane value 9"),
        ),
        ({"method": "get"}, ("method", "must match ^[A-Z]{1,16}$")),
        ({"path": "x"}, ("path", "must match ^/[^\\s]*$")),
        ({"headers": {f"h{i}": "v" for i in range(65)}}, ("headers", "must have at most 64 items")),
        ({"claims": {}}, ("claims.subject", "is required")),
        (
            {"claims": {"subject": "s", "roles": ["r" * 101]}},
            ("claims.roles[0]", "must be at most 100 characters"),
        ),
        (
            {"claims": {"subject": "s", "other": nested(21)}},
            ("claims.other", "must be nested at most 20 levels deep"),
        ),
    ],
)
def test_explain_request_rules(over: dict[str, object], expected: tuple[str, str]) -> None:
    data: dict[str, object] = {
        "source": {"name": "api-gateway", "cluster": "CLUSTER_API_GATEWAY"},
        "destination": {"name": "blockchain-core"},
    } | over
    assert violations(pb.ExplainRequest, data) == [expected]
