"""The generic validator (lucid_cp.validation.normalize) on sidecar.proto's declared rules: every
rule has a violating case, defaults are applied, cross-field rules fire, and every response leaves
room for the free-form nesting cap."""

from __future__ import annotations

import pytest
from google.protobuf import json_format
from google.protobuf.message import Message

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as dpb
from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2 as pb
from lucid_cp.validation import (
    MAX_STRUCT_DEPTH,
    PROTOBUF_RECURSION_LIMIT,
    check_declarations,
    deepest_free_form,
    normalize,
)

SID = "550e8400-e29b-41d4-a716-446655440000"
NAME_RE = "^[a-z0-9-]+$"
PATH_RE = "^/[^\\s*]*\\*?$"
METHOD_RE = "^[A-Z]{1,16}$"
DEST_RE = "^([a-z0-9-]{3,50}|[A-Za-z0-9.-]{1,253}:[0-9]{1,5}|\\[[0-9A-Fa-f:.]{2,45}\\]:[0-9]{1,5})$"
CPU_RE = "^([0-9]{1,6}m|[0-9]{1,4}(\\.[0-9]{1,3})?)$"
MEM_RE = "^[0-9]{1,15}(Ki|Mi|Gi|Ti|K|M|G|T)?$"
BUCKETS = 21  # the LATENCY BUCKETS list of sidecar.proto: 20 bounds + overflow


def parse(cls: type[Message], data: dict[str, object]) -> Message:
    return json_format.ParseDict(data, cls())


def violations(cls: type[Message], data: dict[str, object]) -> list[tuple[str, str]]:
    return [(v.field, v.description) for v in normalize(parse(cls, data))]


def nested(depth: int) -> dict[str, object]:
    value: dict[str, object] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def config(**over: object) -> dict[str, object]:
    base: dict[str, object] = {"serviceId": SID, "routing": {"defaultRoute": "blockchain-core"}}
    return base | over


def policy(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "policyId": "rate-limit-api-calls",
        "type": "POLICY_TYPE_RATE_LIMIT",
        "rules": [{"action": "POLICY_ACTION_RATE_LIMIT", "parameters": {"requests": 100}}],
    }
    return base | over


def test_every_declared_rule_compiles() -> None:
    for message in pb.DESCRIPTOR.message_types_by_name.values():
        check_declarations(message)


def test_the_depth_limit_leaves_room_in_every_sidecar_response() -> None:
    names = {"SidecarMetrics", "SidecarHealth"}
    responses = [
        m
        for name, m in pb.DESCRIPTOR.message_types_by_name.items()
        if name.endswith("Response") or name in names
    ]
    # configuration, policy, metrics, health, the Connect snapshot, DeleteSidecarConfig's
    assert len(responses) == 6
    for message in responses:
        k = deepest_free_form(message)
        assert k + 3 * MAX_STRUCT_DEPTH < PROTOBUF_RECURSION_LIMIT, message.full_name
    # The snapshot carries the deepest free-form fields (mesh policies' JWT claims, rule bodies).
    assert deepest_free_form(pb.ConnectResponse.DESCRIPTOR) == 6


def test_the_enums_have_the_seeds_wire_strings() -> None:
    from gateway.codec import enum_wire

    def strings(enum: object) -> list[str]:
        return enum_wire(enum.DESCRIPTOR).strings  # type: ignore[attr-defined]

    assert strings(pb.PolicyType) == [
        "rate-limit", "circuit-breaker", "retry", "timeout", "auth", "logging"
    ]  # fmt: skip
    assert strings(pb.PolicyAction) == [
        "allow", "deny", "redirect", "mirror", "rate-limit", "circuit-break", "retry", "timeout"
    ]  # fmt: skip
    assert strings(pb.AuthMethod) == ["jwt", "mtls", "api-key"]
    assert strings(pb.AuthorizationPolicy) == ["allow-all", "deny-all", "rbac"]
    assert strings(pb.LogLevel) == ["debug", "info", "warn", "error"]
    assert strings(pb.LogFormat) == ["json", "text"]
    assert strings(pb.TimeRange) == ["1m", "5m", "15m", "1h", "6h", "24h"]
    assert strings(pb.MetricKind) == ["requests", "latency", "errors", "connections", "bandwidth"]


# --- SidecarConfiguration ----------------------------------------------------------------------


def test_a_minimal_configuration_is_valid() -> None:
    assert violations(pb.SidecarConfiguration, config()) == []


def test_an_empty_configuration_names_every_required_field() -> None:
    assert violations(pb.SidecarConfiguration, {}) == [
        ("serviceId", "is required"),
        ("routing", "is required"),
    ]
    assert violations(pb.SidecarConfiguration, config(routing={})) == [
        ("routing.defaultRoute", "is required")
    ]


def test_every_section_gets_its_defaults() -> None:
    cfg = parse(
        pb.SidecarConfiguration,
        config(
            routing={
                "defaultRoute": "blockchain-core",
                "loadBalancing": {"healthCheck": {}, "stickySession": {}},
                "retry": {"maxAttempts": 3},
                "timeout": {},
            },
            security={"mTLS": {}, "authentication": {}, "authorization": {}},
            monitoring={"metrics": {}, "tracing": {}, "logging": {}},
            resources={"limits": {}, "requests": {}},
            policies=[policy()],
        ),
    )
    assert normalize(cfg) == []
    assert isinstance(cfg, pb.SidecarConfiguration)
    lb = cfg.routing.load_balancing
    assert lb.algorithm == dpb.LOAD_BALANCE_ROUND_ROBIN
    hc = lb.health_check
    assert (hc.enabled, hc.interval, hc.timeout) == (True, 30, 5)
    assert (hc.unhealthy_threshold, hc.healthy_threshold) == (3, 2)
    assert lb.sticky_session.enabled is False
    assert (cfg.routing.retry.initial_delay, cfg.routing.timeout.idle) == (1000, 60000)
    sec = cfg.security
    assert (sec.mtls.enabled, sec.authentication.required, sec.authorization.enabled) == (
        True,
        True,
        True,
    )
    assert sec.authorization.policy == pb.AUTHORIZATION_POLICY_RBAC
    mon = cfg.monitoring
    assert (mon.metrics.enabled, mon.metrics.interval) == (True, 30)
    assert (mon.tracing.enabled, mon.tracing.sampling_rate) == (True, 0.1)
    assert (mon.logging.enabled, mon.logging.level, mon.logging.format) == (
        True,
        pb.LOG_LEVEL_INFO,
        pb.LOG_FORMAT_JSON,
    )
    assert (cfg.resources.limits.connections, cfg.resources.requests.connections) == (1000, 10)
    p = cfg.policies[0]
    assert (p.priority, p.enabled) == (100, True)


def test_the_seeds_mtls_json_name() -> None:
    cfg = parse(pb.SidecarConfiguration, config(security={"mTLS": {"enabled": False}}))
    assert isinstance(cfg, pb.SidecarConfiguration)
    assert cfg.security.mtls.enabled is False
    assert "mTLS" in json_format.MessageToDict(cfg)["security"]


@pytest.mark.parametrize(
    "route", ["blockchain-core", "10.0.0.7:8443", "ledger.example.com:443", "[::1]:9000"]
)
def test_destinations_are_a_service_or_host_port(route: str) -> None:
    assert violations(pb.SidecarConfiguration, config(routing={"defaultRoute": route})) == []


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({"serviceId": "not-a-uuid"}, ("serviceId", "must be a UUID")),
        ({"policies": [policy()] * 101}, ("policies", "must have at most 100 items")),
        ({"version": "1" * 21}, ("version", "must be at most 20 characters")),
        ({"routing": {"defaultRoute": "ab"}}, ("routing.defaultRoute", f"must match {DEST_RE}")),
        (
            {"routing": {"defaultRoute": "Bad_Service"}},
            ("routing.defaultRoute", f"must match {DEST_RE}"),
        ),
        (
            {"routing": {"defaultRoute": "h" * 301}},
            ("routing.defaultRoute", "must be at most 300 characters"),
        ),
        (
            {"routing": {"defaultRoute": "abc", "routes": [{"destination": "abc"}] * 101}},
            ("routing.routes", "must have at most 100 items"),
        ),
        (
            {"routing": {"defaultRoute": "abc", "routes": [{"destination": "abc"}]}},
            ("routing.routes[0].match", "is required"),
        ),
        (
            {"routing": {"defaultRoute": "abc", "routes": [{"match": {}}]}},
            ("routing.routes[0].destination", "is required"),
        ),
        (
            {"routing": {"defaultRoute": "abc", "routes": [{"match": {}, "destination": "x:y"}]}},
            ("routing.routes[0].destination", f"must match {DEST_RE}"),
        ),
        (
            {
                "routing": {
                    "defaultRoute": "abc",
                    "routes": [{"match": {}, "destination": "abc", "weight": 101}],
                }
            },
            ("routing.routes[0].weight", "must be <= 100"),
        ),
        (
            {
                "routing": {
                    "defaultRoute": "abc",
                    "routes": [{"match": {}, "destination": "abc", "timeout": 99}],
                }
            },
            ("routing.routes[0].timeout", "must be >= 100"),
        ),
        (
            {
                "routing": {
                    "defaultRoute": "abc",
                    "routes": [{"match": {}, "destination": "abc", "timeout": 300001}],
                }
            },
            ("routing.routes[0].timeout", "must be <= 300000"),
        ),
        (
            {
                "routing": {
                    "defaultRoute": "abc",
                    "routes": [{"match": {}, "destination": "abc", "retry": {}}],
                }
            },
            ("routing.routes[0].retry.maxAttempts", "is required"),
        ),
        (
            {"routing": {"defaultRoute": "abc", "routes": [{"match": {"path": "api"}, "destination": "abc"}]}},
            ("routing.routes[0].match.path", f"must match {PATH_RE}"),
        ),
        (
            {"routing": {"defaultRoute": "abc", "routes": [{"match": {"path": "/" + "a" * 1024}, "destination": "abc"}]}},
            ("routing.routes[0].match.path", "must be at most 1024 characters"),
        ),
        (
            {"routing": {"defaultRoute": "abc", "routes": [{"match": {"method": "get"}, "destination": "abc"}]}},
            ("routing.routes[0].match.method", f"must match {METHOD_RE}"),
        ),
        (
            {"routing": {"defaultRoute": "abc", "routes": [{"match": {"headers": {f"h{i}": "v" for i in range(33)}}, "destination": "abc"}]}},
            ("routing.routes[0].match.headers", "must have at most 32 items"),
        ),
        (
            {"routing": {"defaultRoute": "abc", "routes": [{"match": {"query": {f"q{i}": "v" for i in range(33)}}, "destination": "abc"}]}},
            ("routing.routes[0].match.query", "must have at most 32 items"),
        ),
        ({"routing": {"defaultRoute": "abc", "retry": {"maxAttempts": 11}}}, ("routing.retry.maxAttempts", "must be <= 10")),
        ({"routing": {"defaultRoute": "abc", "timeout": {"connect": 99}}}, ("routing.timeout.connect", "must be >= 100")),
    ],
)  # fmt: skip
def test_configuration_and_routing_rules(
    over: dict[str, object], expected: tuple[str, str]
) -> None:
    assert violations(pb.SidecarConfiguration, config(**over)) == [expected]


def lb(**over: object) -> dict[str, object]:
    return config(routing={"defaultRoute": "abc", "loadBalancing": over})


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({"algorithm": 9}, ("routing.loadBalancing.algorithm", "unknown LoadBalance value 9")),
        (
            {"algorithm": "LOAD_BALANCE_CONSISTENT_HASH"},
            ("routing.loadBalancing.hashHeader", "is required when algorithm is consistent-hash"),
        ),
        ({"hashHeader": "x y"}, ("routing.loadBalancing.hashHeader", "must match ^[A-Za-z0-9_-]{1,128}$")),
        ({"healthCheck": {"interval": 4}}, ("routing.loadBalancing.healthCheck.interval", "must be >= 5")),
        ({"healthCheck": {"interval": 301}}, ("routing.loadBalancing.healthCheck.interval", "must be <= 300")),
        ({"healthCheck": {"timeout": 0}}, ("routing.loadBalancing.healthCheck.timeout", "must be >= 1")),
        ({"healthCheck": {"timeout": 61}}, ("routing.loadBalancing.healthCheck.timeout", "must be <= 60")),
        ({"healthCheck": {"unhealthyThreshold": 11}}, ("routing.loadBalancing.healthCheck.unhealthyThreshold", "must be <= 10")),
        ({"healthCheck": {"healthyThreshold": 0}}, ("routing.loadBalancing.healthCheck.healthyThreshold", "must be >= 1")),
        (
            {"stickySession": {"enabled": True}},
            ("routing.loadBalancing.stickySession.cookie", "is required when enabled is true"),
        ),
        (
            {"stickySession": {"cookie": "a;b"}},
            ("routing.loadBalancing.stickySession.cookie", "must match ^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$"),
        ),
        ({"stickySession": {"ttl": 0}}, ("routing.loadBalancing.stickySession.ttl", "must be >= 1")),
        ({"stickySession": {"ttl": 604801}}, ("routing.loadBalancing.stickySession.ttl", "must be <= 604800")),
    ],
)  # fmt: skip
def test_load_balancing_rules(over: dict[str, object], expected: tuple[str, str]) -> None:
    assert violations(pb.SidecarConfiguration, lb(**over)) == [expected]


def test_consistent_hash_and_sticky_sessions_with_their_keys_are_valid() -> None:
    ok = lb(
        algorithm="LOAD_BALANCE_CONSISTENT_HASH",
        hashHeader="x-user-id",
        stickySession={"enabled": True, "cookie": "lucid-affinity", "ttl": 3600},
    )
    assert violations(pb.SidecarConfiguration, ok) == []


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"security": {"mTLS": {"certAuthority": "x" * 65537}}}, ("security.mTLS.certAuthority", "must be at most 65536 characters")),
        ({"security": {"mTLS": {"clientCert": "x" * 65537}}}, ("security.mTLS.clientCert", "must be at most 65536 characters")),
        ({"security": {"mTLS": {"clientKey": "x" * 65537}}}, ("security.mTLS.clientKey", "must be at most 65536 characters")),
        ({"security": {"authentication": {"methods": [4]}}}, ("security.authentication.methods[0]", "unknown AuthMethod value 4")),
        ({"security": {"authentication": {"methods": ["AUTH_METHOD_JWT"] * 4}}}, ("security.authentication.methods", "must have at most 3 items")),
        ({"security": {"authorization": {"policy": 4}}}, ("security.authorization.policy", "unknown AuthorizationPolicy value 4")),
        ({"monitoring": {"metrics": {"endpoint": "metrics"}}}, ("monitoring.metrics.endpoint", "must match ^/[A-Za-z0-9/_.-]*$")),
        ({"monitoring": {"metrics": {"endpoint": "/" + "m" * 256}}}, ("monitoring.metrics.endpoint", "must be at most 256 characters")),
        ({"monitoring": {"metrics": {"interval": 0}}}, ("monitoring.metrics.interval", "must be >= 1")),
        ({"monitoring": {"metrics": {"interval": 301}}}, ("monitoring.metrics.interval", "must be <= 300")),
        ({"monitoring": {"tracing": {"samplingRate": -0.1}}}, ("monitoring.tracing.samplingRate", "must be >= 0")),
        ({"monitoring": {"tracing": {"samplingRate": 1.5}}}, ("monitoring.tracing.samplingRate", "must be <= 1")),
        ({"monitoring": {"tracing": {"endpoint": "ftp://collector"}}}, ("monitoring.tracing.endpoint", "must match ^(https?|grpcs?)://[^\\s/]+(/\\S*)?$")),
        ({"monitoring": {"tracing": {"endpoint": "http://c/" + "p" * 2048}}}, ("monitoring.tracing.endpoint", "must be at most 2048 characters")),
        ({"monitoring": {"logging": {"level": 5}}}, ("monitoring.logging.level", "unknown LogLevel value 5")),
        ({"monitoring": {"logging": {"format": 3}}}, ("monitoring.logging.format", "unknown LogFormat value 3")),
        ({"resources": {"limits": {"cpu": "500 m"}}}, ("resources.limits.cpu", f"must match {CPU_RE}")),
        ({"resources": {"limits": {"memory": "512MB"}}}, ("resources.limits.memory", f"must match {MEM_RE}")),
        ({"resources": {"limits": {"connections": 0}}}, ("resources.limits.connections", "must be >= 1")),
        ({"resources": {"limits": {"connections": 1000001}}}, ("resources.limits.connections", "must be <= 1000000")),
        ({"resources": {"requests": {"cpu": "m"}}}, ("resources.requests.cpu", f"must match {CPU_RE}")),
        ({"resources": {"requests": {"memory": "-1"}}}, ("resources.requests.memory", f"must match {MEM_RE}")),
        ({"resources": {"requests": {"connections": -1}}}, ("resources.requests.connections", "must be >= 0")),
        ({"resources": {"requests": {"connections": 1000001}}}, ("resources.requests.connections", "must be <= 1000000")),
    ],
)  # fmt: skip
def test_security_monitoring_and_resource_rules(
    section: dict[str, object], expected: tuple[str, str]
) -> None:
    assert violations(pb.SidecarConfiguration, config(**section)) == [expected]


def test_seed_examples_of_resources_and_monitoring_are_valid() -> None:
    data = config(
        resources={
            "limits": {"cpu": "500m", "memory": "512Mi", "connections": 1000},
            "requests": {"cpu": "0.1", "memory": "128Mi", "connections": 10},
        },
        monitoring={
            "metrics": {"endpoint": "/metrics", "interval": 30},
            "tracing": {"samplingRate": 0.1, "endpoint": "grpc://otel-collector:4317"},
        },
    )
    assert violations(pb.SidecarConfiguration, data) == []


# --- SidecarPolicy / PolicyRule ---------------------------------------------------------------


def test_a_minimal_policy_gets_its_defaults() -> None:
    p = parse(pb.SidecarPolicy, policy())
    assert normalize(p) == []
    assert isinstance(p, pb.SidecarPolicy)
    assert (p.priority, p.enabled) == (100, True)


def test_an_empty_policy_names_every_required_field() -> None:
    assert violations(pb.SidecarPolicy, {}) == [
        ("policyId", "is required"),
        ("type", "is required"),
        ("rules", "is required"),
    ]


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({"policyId": "Bad_Id"}, ("policyId", f"must match {NAME_RE}")),
        ({"policyId": "ab"}, ("policyId", "must be at least 3 characters")),
        ({"policyId": "a" * 51}, ("policyId", "must be at most 50 characters")),
        ({"type": 7}, ("type", "unknown PolicyType value 7")),
        ({"rules": [{"action": "POLICY_ACTION_ALLOW"}] * 101}, ("rules", "must have at most 100 items")),
        ({"rules": [{}]}, ("rules[0].action", "is required")),
        ({"rules": [{"action": 9}]}, ("rules[0].action", "unknown PolicyAction value 9")),
        ({"priority": 0}, ("priority", "must be >= 1")),
        ({"priority": 1001}, ("priority", "must be <= 1000")),
        ({"conditions": {"source": "s" * 257}}, ("conditions.source", "must be at most 256 characters")),
        ({"conditions": {"destination": "d" * 257}}, ("conditions.destination", "must be at most 256 characters")),
        ({"conditions": {"path": "/a*b"}}, ("conditions.path", f"must match {PATH_RE}")),
        ({"conditions": {"method": "Post"}}, ("conditions.method", f"must match {METHOD_RE}")),
        ({"conditions": {"headers": {f"h{i}": "v" for i in range(33)}}}, ("conditions.headers", "must have at most 32 items")),
        ({"rules": [{"action": "POLICY_ACTION_ALLOW", "weight": -1}]}, ("rules[0].weight", "must be >= 0")),
        ({"rules": [{"action": "POLICY_ACTION_ALLOW", "weight": 101}]}, ("rules[0].weight", "must be <= 100")),
        ({"rules": [{"action": "POLICY_ACTION_ALLOW", "match": {"path": "x"}}]}, ("rules[0].match.path", f"must match {PATH_RE}")),
        ({"rules": [{"action": "POLICY_ACTION_ALLOW", "match": {"method": "x"}}]}, ("rules[0].match.method", f"must match {METHOD_RE}")),
        ({"rules": [{"action": "POLICY_ACTION_ALLOW", "match": {"headers": {f"h{i}": "v" for i in range(33)}}}]}, ("rules[0].match.headers", "must have at most 32 items")),
        ({"rules": [{"action": "POLICY_ACTION_ALLOW", "match": {"query": {f"q{i}": "v" for i in range(33)}}}]}, ("rules[0].match.query", "must have at most 32 items")),
        ({"rules": [{"action": "POLICY_ACTION_ALLOW", "match": {"body": {"x": "y" * 5000}}}]}, ("rules[0].match.body", "must be at most 4096 bytes serialized")),
        ({"rules": [{"action": "POLICY_ACTION_ALLOW", "match": {"body": nested(MAX_STRUCT_DEPTH + 1)}}]}, ("rules[0].match.body", f"must be nested at most {MAX_STRUCT_DEPTH} levels deep")),
        ({"rules": [{"action": "POLICY_ACTION_MIRROR", "parameters": {"destination": 3}}]}, ("rules[0].parameters.destination", "must be a string")),
        ({"rules": [{"action": "POLICY_ACTION_MIRROR", "parameters": {"destination": "d" * 301}}]}, ("rules[0].parameters.destination", "must be at most 300 characters")),
        ({"rules": [{"action": "POLICY_ACTION_MIRROR", "parameters": {"destination": "abc", "percent": "5"}}]}, ("rules[0].parameters.percent", "must be a number")),
        ({"rules": [{"action": "POLICY_ACTION_RATE_LIMIT", "parameters": {"requests": "many"}}]}, ("rules[0].parameters.requests", "must be a number")),
        ({"rules": [{"action": "POLICY_ACTION_RATE_LIMIT", "parameters": {"requests": 1, "seconds": []}}]}, ("rules[0].parameters.seconds", "must be a number")),
        ({"rules": [{"action": "POLICY_ACTION_RETRY", "parameters": {"blob": "x" * 5000}}]}, ("rules[0].parameters", "must be at most 4096 bytes serialized")),
        ({"rules": [{"action": "POLICY_ACTION_RETRY", "parameters": nested(MAX_STRUCT_DEPTH + 1)}]}, ("rules[0].parameters", f"must be nested at most {MAX_STRUCT_DEPTH} levels deep")),
    ],
)  # fmt: skip
def test_policy_rules(over: dict[str, object], expected: tuple[str, str]) -> None:
    assert violations(pb.SidecarPolicy, policy(**over)) == [expected]


@pytest.mark.parametrize(
    ("action", "wire"),
    [
        ("POLICY_ACTION_REDIRECT", "redirect"),
        ("POLICY_ACTION_MIRROR", "mirror"),
        ("POLICY_ACTION_RATE_LIMIT", "rate-limit"),
        ("POLICY_ACTION_CIRCUIT_BREAK", "circuit-break"),
        ("POLICY_ACTION_RETRY", "retry"),
        ("POLICY_ACTION_TIMEOUT", "timeout"),
    ],
)
def test_actions_with_parameters_require_them(action: str, wire: str) -> None:
    assert violations(pb.SidecarPolicy, policy(rules=[{"action": action}])) == [
        ("rules[0].parameters", f"is required when action is {wire}")
    ]
    ok = {"action": action, "parameters": {"destination": "abc"}}
    assert violations(pb.SidecarPolicy, policy(rules=[ok])) == []


@pytest.mark.parametrize("action", ["POLICY_ACTION_ALLOW", "POLICY_ACTION_DENY"])
def test_allow_and_deny_take_no_parameters(action: str) -> None:
    assert violations(pb.SidecarPolicy, policy(rules=[{"action": action}])) == []


def test_policy_paths_inside_a_configuration_are_prefixed() -> None:
    data = config(policies=[policy(), policy(priority=0)])
    assert violations(pb.SidecarConfiguration, data) == [("policies[1].priority", "must be >= 1")]


# --- RPC requests -------------------------------------------------------------------------------


def test_configure_sidecar_request() -> None:
    assert violations(pb.ConfigureSidecarRequest, {}) == [("configuration", "is required")]
    bad = {"configuration": config(serviceId="x")}
    assert violations(pb.ConfigureSidecarRequest, bad) == [
        ("configuration.serviceId", "must be a UUID")
    ]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, [("policyId", "is required"), ("policy", "is required")]),
        ({"policyId": "Ab!", "policy": policy()}, [("policyId", f"must match {NAME_RE}")]),
        ({"policyId": "ab", "policy": policy()}, [("policyId", "must be at least 3 characters")]),
        ({"policyId": "p" * 51, "policy": policy()}, [("policyId", "must be at most 50 characters")]),
        ({"policyId": "pol", "policy": policy(type=0)}, [("policy.type", "is required")]),
        ({"policyId": "pol", "policy": policy(), "serviceName": "Xyz"}, [("serviceName", f"must match {NAME_RE}")]),
        ({"policyId": "pol", "policy": policy(), "serviceName": "ab"}, [("serviceName", "must be at least 3 characters")]),
        ({"policyId": "pol", "policy": policy(), "serviceName": "s" * 51}, [("serviceName", "must be at most 50 characters")]),
        ({"policyId": "pol", "policy": policy(), "expectedRevision": 0}, [("expectedRevision", "must be >= 1")]),
    ],
)  # fmt: skip
def test_update_sidecar_policy_request(
    data: dict[str, object], expected: list[tuple[str, str]]
) -> None:
    assert violations(pb.UpdateSidecarPolicyRequest, data) == expected


def test_metrics_request_defaults_to_15_minutes() -> None:
    req = parse(pb.GetSidecarMetricsRequest, {})
    assert normalize(req) == []
    assert isinstance(req, pb.GetSidecarMetricsRequest)
    assert req.time_range == pb.TIME_RANGE_15M


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"timeRange": 7}, ("timeRange", "unknown TimeRange value 7")),
        ({"metrics": [6]}, ("metrics[0]", "unknown MetricKind value 6")),
        ({"metrics": ["METRIC_KIND_LATENCY"] * 6}, ("metrics", "must have at most 5 items")),
        ({"serviceId": "x"}, ("serviceId", "must be a UUID")),
        ({"serviceName": "Bad"}, ("serviceName", f"must match {NAME_RE}")),
        ({"serviceName": "ab"}, ("serviceName", "must be at least 3 characters")),
        ({"serviceName": "s" * 51}, ("serviceName", "must be at most 50 characters")),
    ],
)
def test_metrics_request_rules(data: dict[str, object], expected: tuple[str, str]) -> None:
    assert violations(pb.GetSidecarMetricsRequest, data) == [expected]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"serviceId": "x"}, ("serviceId", "must be a UUID")),
        ({"serviceName": "Bad"}, ("serviceName", f"must match {NAME_RE}")),
        ({"serviceName": "ab"}, ("serviceName", "must be at least 3 characters")),
        ({"serviceName": "s" * 51}, ("serviceName", "must be at most 50 characters")),
    ],
)
def test_health_request_rules(data: dict[str, object], expected: tuple[str, str]) -> None:
    assert violations(pb.GetSidecarHealthRequest, {}) == []
    assert violations(pb.GetSidecarHealthRequest, data) == [expected]


# --- Connect ------------------------------------------------------------------------------------


def report(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "windowStart": "2025-01-10T19:07:30Z",
        "windowEnd": "2025-01-10T19:08:00Z",
        "requests": 10,
        "byStatus": {"2xx": 9, "5xx": 1},
        "errors": 1,
        "latencyBuckets": [1] * 10 + [0] * (BUCKETS - 10),
        "latencySumMs": 123.5,
        "connectionsActive": 3,
        "connectionsOpened": 4,
        "bytesIn": 1000,
        "bytesOut": 2000,
        "healthy": True,
    }
    return {"report": base | over}


def test_every_kind_of_connect_request_can_be_valid() -> None:
    for data in (
        {"hello": {"serviceId": SID, "version": 12, "build": "1.4.2"}},
        {"hello": {"serviceId": SID}},
        {"ack": {"version": 12, "nonce": "n-1"}},
        {"nack": {"version": 12, "nonce": "n-1", "error": "unknown field"}},
        report(),
        report(requests=0, latencyBuckets=[]),
    ):
        assert violations(pb.ConnectRequest, data) == [], data


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"hello": {}}, [("hello.serviceId", "is required")]),
        ({"hello": {"serviceId": "x"}}, [("hello.serviceId", "must be a UUID")]),
        ({"hello": {"serviceId": SID, "version": -1}}, [("hello.version", "must be >= 0")]),
        ({"hello": {"serviceId": SID, "build": "b" * 65}}, [("hello.build", "must be at most 64 characters")]),
        ({"ack": {}}, [("ack.version", "is required"), ("ack.nonce", "is required")]),
        ({"ack": {"version": -1, "nonce": "n"}}, [("ack.version", "must be >= 1")]),
        ({"ack": {"version": 1, "nonce": "n" * 65}}, [("ack.nonce", "must be at most 64 characters")]),
        ({"nack": {}}, [("nack.version", "is required"), ("nack.nonce", "is required"), ("nack.error", "is required")]),
        ({"nack": {"version": -2, "nonce": "n", "error": "e"}}, [("nack.version", "must be >= 1")]),
        ({"nack": {"version": 1, "nonce": "n" * 65, "error": "e"}}, [("nack.nonce", "must be at most 64 characters")]),
        ({"nack": {"version": 1, "nonce": "n", "error": "e" * 4097}}, [("nack.error", "must be at most 4096 characters")]),
        ({"report": {}}, [("report.windowStart", "is required"), ("report.windowEnd", "is required")]),
        (report(requests=-1), [("report.requests", "must be >= 0")]),
        (report(byStatus={f"{i}xx": 1 for i in range(1, 7)}), [("report.byStatus", "must have at most 5 items")]),
        (report(errors=-1), [("report.errors", "must be >= 0")]),
        (report(latencyBuckets=[1] * (BUCKETS - 1)), [("report.latencyBuckets", f"must have at least {BUCKETS} items")]),
        (report(latencyBuckets=[1] * (BUCKETS + 1)), [("report.latencyBuckets", f"must have at most {BUCKETS} items")]),
        (report(latencyBuckets=[-1] + [0] * (BUCKETS - 1)), [("report.latencyBuckets[0]", "must be >= 0")]),
        (report(latencySumMs=-0.5), [("report.latencySumMs", "must be >= 0")]),
        (report(connectionsActive=-1), [("report.connectionsActive", "must be >= 0")]),
        (report(connectionsOpened=-1), [("report.connectionsOpened", "must be >= 0")]),
        (report(bytesIn=-1), [("report.bytesIn", "must be >= 0")]),
        (report(bytesOut=-1), [("report.bytesOut", "must be >= 0")]),
        (report(healthy=False, reason="r" * 1025), [("report.reason", "must be at most 1024 characters")]),
    ],
)  # fmt: skip
def test_connect_request_rules(data: dict[str, object], expected: list[tuple[str, str]]) -> None:
    assert violations(pb.ConnectRequest, data) == expected


def test_a_snapshot_holds_mesh_policies_and_destinations() -> None:
    snap = parse(
        pb.ConnectResponse,
        {
            "version": 42,
            "nonce": "n-42",
            "workload": {"name": "api-gateway", "cluster": "CLUSTER_API_GATEWAY"},
            "configuration": config(),
            "trafficPolicies": [
                {
                    "name": "gw",
                    "source": "api-gateway",
                    "destination": "*",
                    "rules": [{"action": "TRAFFIC_ACTION_ALLOW"}],
                }
            ],
            "destinations": [
                {
                    "service": "blockchain-core",
                    "settings": {"retry": {"maxAttempts": 2}},
                    "endpoints": [{"host": "10.0.0.7", "port": 8443, "protocol": "PROTOCOL_HTTPS"}],
                }
            ],
            "mtls": {"mode": "MTLS_MODE_DISABLED"},
        },
    )
    assert isinstance(snap, pb.ConnectResponse)
    assert snap.destinations[0].endpoints[0].protocol == dpb.PROTOCOL_HTTPS
    assert pb.ConnectResponse.FromString(snap.SerializeToString()) == snap
