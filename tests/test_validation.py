"""lucid_cp.validation on the real discovery messages: the rules declared in
proto/lucid/discovery/v1/discovery.proto, the defaults, and the JSON paths of violations."""

from __future__ import annotations

import pytest
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import DecodeError

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.api.lucid.discovery.v1 import storage_pb2
from lucid_cp.app import SYSTEMS
from lucid_cp.errors import FieldViolation
from lucid_cp.validation import (
    MAX_STRUCT_DEPTH,
    PROTOBUF_RECURSION_LIMIT,
    check_declarations,
    deepest_free_form,
    is_hostname_or_ip,
    is_uuid,
    json_depth,
    non_finite,
    normalize,
)

UUID = "123e4567-e89b-12d3-a456-426614174000"


def registration() -> pb.ServiceRegistration:
    """A registration that satisfies every rule (and has no field left to default but ttl/weight)."""
    reg = pb.ServiceRegistration(
        service_id=UUID,
        service_name="api-gateway",
        cluster=pb.CLUSTER_API_GATEWAY,
        plane=pb.PLANE_OPS,
        version="1.0.0",
    )
    reg.endpoint.host = "api.lucid.onion"
    reg.endpoint.port = 8080
    reg.endpoint.protocol = pb.PROTOCOL_HTTPS
    reg.health_check.endpoint = "/health"
    reg.health_check.interval = 30
    reg.health_check.timeout = 10
    return reg


def request(reg: pb.ServiceRegistration | None = None) -> pb.RegisterRequest:
    return pb.RegisterRequest(registration=reg if reg is not None else registration())


def fields(violations: list[FieldViolation]) -> list[str]:
    return [v.field for v in violations]


def only(violations: list[FieldViolation]) -> FieldViolation:
    assert len(violations) == 1, violations
    return violations[0]


def test_a_valid_request_has_no_violations() -> None:
    assert normalize(request()) == []


# --- required ----------------------------------------------------------------------------------


def test_an_empty_registration_names_every_required_field() -> None:
    assert fields(normalize(pb.ServiceRegistration())) == [
        "serviceId",
        "serviceName",
        "cluster",
        "plane",
        "endpoint",
        "version",
        "healthCheck",
    ]


def test_a_missing_required_message_is_reported_once_and_not_descended_into() -> None:
    assert normalize(pb.RegisterRequest()) == [FieldViolation("registration", "is required")]


def test_a_zero_enum_counts_as_absent_for_required() -> None:
    reg = registration()
    reg.plane = pb.PLANE_UNSPECIFIED
    assert only(normalize(request(reg))) == FieldViolation("registration.plane", "is required")


def test_a_zero_plain_int_counts_as_absent_for_required() -> None:
    reg = registration()
    reg.endpoint.port = 0  # proto3 scalar without presence: 0 is "not set"
    assert only(normalize(request(reg))) == FieldViolation(
        "registration.endpoint.port", "is required"
    )


def test_an_optional_scalar_explicitly_zero_is_present_and_range_checked() -> None:
    reg = registration()
    reg.health_check.interval = 0  # `optional`: presence, so the bound applies, not "required"
    assert only(normalize(request(reg))) == FieldViolation(
        "registration.healthCheck.interval", "must be >= 5"
    )
    reg.health_check.ClearField("interval")
    assert only(normalize(request(reg))) == FieldViolation(
        "registration.healthCheck.interval", "is required"
    )


def test_an_unknown_enum_number_is_a_violation() -> None:
    reg = registration()
    reg.cluster = 99  # proto3 enums are open: the wire accepts any number
    assert only(normalize(request(reg))) == FieldViolation(
        "registration.cluster", "unknown Cluster value 99"
    )


# --- strings: length, pattern, formats ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("abc", True),  # min_len 3
        ("ab", False),
        ("a" * 50, True),  # max_len 50
        ("a" * 51, False),
        ("api-gateway-2", True),
        ("Api-Gateway", False),  # pattern ^[a-z0-9-]+$
        ("api_gateway", False),
    ],
)
def test_service_name_length_and_pattern(name: str, ok: bool) -> None:
    reg = registration()
    reg.service_name = name
    assert (normalize(request(reg)) == []) is ok


def test_too_short_and_off_pattern_report_both_violations() -> None:
    reg = registration()
    reg.service_name = "A_"
    assert normalize(request(reg)) == [
        FieldViolation("registration.serviceName", "must be at least 3 characters"),
        FieldViolation("registration.serviceName", "must match ^[a-z0-9-]+$"),
    ]


def test_too_long_reports_only_the_length() -> None:
    reg = registration()
    reg.service_name = "X" * 51  # also off-pattern, but a too-long string is not matched further
    assert only(normalize(request(reg))) == FieldViolation(
        "registration.serviceName", "must be at most 50 characters"
    )


@pytest.mark.parametrize(
    ("version", "ok"),
    [
        ("1.0.0", True),
        ("10.20.30-rc-1", True),
        ("1.0", False),
        ("v1.0.0", False),
        ("1.0.0 ", False),
    ],
)
def test_version_pattern_is_matched_in_full(version: str, ok: bool) -> None:
    reg = registration()
    reg.version = version
    assert (normalize(request(reg)) == []) is ok


def test_pattern_applies_to_optional_strings_only_when_set() -> None:
    reg = registration()
    assert normalize(request(reg)) == []  # instance_id absent: no pattern check
    reg.instance_id = "Node_1"
    assert only(normalize(request(reg))).field == "registration.instanceId"


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (UUID, True),
        (UUID.upper(), True),
        (UUID.replace("-", ""), False),
        (UUID[:-1], False),
        (UUID + "0", False),
        ("not-a-uuid", False),
    ],
)
def test_uuid_format(value: str, ok: bool) -> None:
    assert is_uuid(value) is ok
    got = normalize(pb.DeregisterRequest(service_id=value))
    assert got == ([] if ok else [FieldViolation("serviceId", "must be a UUID")])


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("api.lucid.onion", True),
        ("localhost", True),
        ("example.com.", True),  # fully qualified, trailing dot
        ("10.0.0.1", True),
        ("::1", True),
        ("2001:db8::1", True),
        ("a" * 63 + ".com", True),  # longest label
        ("a" * 64 + ".com", False),
        ("-bad.example", False),
        ("bad-.example", False),
        ("under_score.example", False),
        ("a..b", False),
        (".", False),
        ("10.0.0.256", False),  # all-numeric last label: not a hostname, not an IPv4
        ("[::1]", False),
        ("host name", False),
    ],
)
def test_hostname_or_ip_format(host: str, ok: bool) -> None:
    assert is_hostname_or_ip(host) is ok
    reg = registration()
    reg.endpoint.host = host
    got = normalize(request(reg))
    assert got == (
        []
        if ok
        else [FieldViolation("registration.endpoint.host", "must be a hostname or an IP address")]
    )


def test_hostname_longer_than_max_len_reports_only_the_length() -> None:
    reg = registration()
    reg.endpoint.host = ".".join(["a" * 50] * 5)  # 254 characters
    assert only(normalize(request(reg))) == FieldViolation(
        "registration.endpoint.host", "must be at most 253 characters"
    )


@pytest.mark.parametrize("check", [is_uuid, is_hostname_or_ip])
def test_a_trailing_newline_is_not_a_valid_format(check: object) -> None:
    value = UUID + "\n" if check is is_uuid else "example.com\n"
    assert check(value) is False  # type: ignore[operator]


# --- numbers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("port", "violation"),
    [
        (1, None),
        (65535, None),
        (65536, "must be <= 65535"),
        (-1, "must be >= 1"),
    ],
)
def test_port_bounds_are_inclusive(port: int, violation: str | None) -> None:
    reg = registration()
    reg.endpoint.port = port
    got = normalize(request(reg))
    assert got == (
        [] if violation is None else [FieldViolation("registration.endpoint.port", violation)]
    )


@pytest.mark.parametrize(
    ("value", "violation"),
    [
        (0.0, None),
        (3_600_000.0, None),
        (-0.5, "must be >= 0"),
        (3_600_000.5, "must be <= 3600000"),
    ],
)
def test_double_bounds(value: float, violation: str | None) -> None:
    req = pb.UpdateHealthRequest(service_id=UUID)
    req.update.status = pb.HEALTH_STATE_HEALTHY
    req.update.response_time = value
    got = normalize(req)
    assert got == ([] if violation is None else [FieldViolation("update.responseTime", violation)])


def test_int64_minimum() -> None:
    assert normalize(pb.WatchRequest(start_revision=0)) == []
    assert normalize(pb.WatchRequest(start_revision=-1)) == [
        FieldViolation("startRevision", "must be >= 0")
    ]


def test_an_explicit_optional_zero_is_checked_against_the_minimum() -> None:
    assert normalize(pb.HeartbeatRequest(service_id=UUID, active_connections=0)) == []
    assert normalize(pb.HeartbeatRequest(service_id=UUID, active_connections=-1)) == [
        FieldViolation("activeConnections", "must be >= 0")
    ]
    reg = registration()
    reg.ttl = 0  # explicit: present, below the minimum of 30 (the default is not applied)
    assert only(normalize(request(reg))) == FieldViolation("registration.ttl", "must be >= 30")


# --- defaults -----------------------------------------------------------------------------------


def test_defaults_fill_absent_optional_fields() -> None:
    req = request()
    assert not req.registration.HasField("ttl")
    assert normalize(req) == []
    reg = req.registration
    assert (reg.ttl, reg.weight) == (300, 100)
    hc = reg.health_check
    assert (hc.retries, hc.success_threshold, hc.failure_threshold) == (3, 1, 3)
    assert hc.HasField("retries")


def test_defaults_do_not_override_explicit_values() -> None:
    reg = registration()
    reg.ttl = 30
    reg.weight = 0  # explicitly zero weight is kept, not replaced by the default 100
    reg.health_check.retries = 1
    req = request(reg)
    assert normalize(req) == []
    assert (req.registration.ttl, req.registration.weight) == (30, 0)
    assert req.registration.health_check.retries == 1


def test_defaults_of_an_absent_sub_message_are_not_applied() -> None:
    req = request()
    normalize(req)
    assert not req.registration.health_check.HasField("http_check")
    assert not req.registration.health_check.HasField("grpc_check")


def test_defaults_inside_a_present_sub_message() -> None:
    req = request()
    req.registration.health_check.http_check.SetInParent()
    req.registration.health_check.grpc_check.SetInParent()
    assert normalize(req) == []
    hc = req.registration.health_check
    assert hc.http_check.method == pb.HTTP_METHOD_GET
    assert list(hc.http_check.expected_status) == [200]
    assert hc.grpc_check.timeout == 5


def test_enum_and_zero_defaults_on_top_level_requests() -> None:
    resolve = pb.ResolveRequest(service_name="api-gateway")
    assert normalize(resolve) == []
    assert resolve.load_balance == pb.LOAD_BALANCE_ROUND_ROBIN
    discover = pb.DiscoverRequest()
    assert normalize(discover) == []
    assert (discover.limit, discover.offset) == (100, 0)
    assert discover.HasField("offset")  # a default of 0 still records presence


def test_a_repeated_default_is_applied_once() -> None:
    req = request()
    req.registration.health_check.http_check.SetInParent()
    normalize(req)
    normalize(req)
    assert list(req.registration.health_check.http_check.expected_status) == [200]


def test_defaults_are_applied_even_when_other_fields_are_invalid() -> None:
    reg = registration()
    reg.service_name = "X"
    req = request(reg)
    assert fields(normalize(req)) == ["registration.serviceName", "registration.serviceName"]
    assert req.registration.ttl == 300


# --- repeated fields ----------------------------------------------------------------------------


def test_repeated_items_are_checked_with_their_index() -> None:
    req = request()
    req.registration.health_check.http_check.expected_status.extend([200, 99, 204, 600])
    assert normalize(req) == [
        FieldViolation("registration.healthCheck.httpCheck.expectedStatus[1]", "must be >= 100"),
        FieldViolation("registration.healthCheck.httpCheck.expectedStatus[3]", "must be <= 599"),
    ]


def test_max_items_boundary() -> None:
    req = request()
    statuses = req.registration.health_check.http_check.expected_status
    statuses.extend([200] * 50)
    assert normalize(req) == []
    statuses.append(1)  # 51 items; the bad item itself is not reported past max_items
    assert normalize(req) == [
        FieldViolation(
            "registration.healthCheck.httpCheck.expectedStatus", "must have at most 50 items"
        )
    ]


def test_repeated_messages_are_walked_with_their_index() -> None:
    resp = pb.DiscoverResponse()
    resp.services.add(service_id="a", cluster=pb.CLUSTER_API_GATEWAY)
    bad = resp.services.add(service_id="b", plane=42)
    bad.health.SetInParent()  # HealthStatus.status is required
    assert normalize(resp) == [
        FieldViolation("services[1].plane", "unknown Plane value 42"),
        FieldViolation("services[1].health.status", "is required"),
    ]


def test_map_fields_are_not_item_checked() -> None:
    req = request()
    req.registration.health_check.http_check.headers["X-Anything"] = ""
    assert normalize(req) == []


# --- free-form Structs ----------------------------------------------------------------------------


def test_struct_max_bytes() -> None:
    reg = registration()
    reg.metadata.update({"blob": "x" * 8000})
    assert normalize(request(reg)) == []
    reg.metadata.update({"blob": "x" * 8200})
    assert normalize(request(reg)) == [
        FieldViolation("registration.metadata", "must be at most 8192 bytes serialized")
    ]


def test_struct_max_bytes_on_a_struct_without_properties() -> None:
    req = pb.UpdateHealthRequest(service_id=UUID)
    req.update.status = pb.HEALTH_STATE_HEALTHY
    req.update.details.update({"blob": "x" * 9000})
    assert normalize(req) == [
        FieldViolation("update.details", "must be at most 8192 bytes serialized")
    ]


def test_an_oversize_struct_skips_property_checks() -> None:
    reg = registration()
    reg.metadata.update({"description": 1, "blob": "x" * 9000})
    assert only(normalize(request(reg))).field == "registration.metadata"


@pytest.mark.parametrize(
    ("metadata", "violations"),
    [
        ({"description": "ok", "tags": ["a"], "capabilities": [], "dependencies": ["b"]}, []),
        ({"other": {"free": [1, True]}}, []),  # undeclared properties are free
        ({"description": 3}, [("registration.metadata.description", "must be a string")]),
        ({"description": "d" * 500}, []),
        (
            {"description": "d" * 501},
            [("registration.metadata.description", "must be at most 500 characters")],
        ),
        ({"tags": "a"}, [("registration.metadata.tags", "must be a list of strings")]),
        ({"tags": ["a", 1]}, [("registration.metadata.tags", "must be a list of strings")]),
        (
            {"capabilities": {"a": "b"}, "dependencies": [None]},
            [
                ("registration.metadata.capabilities", "must be a list of strings"),
                ("registration.metadata.dependencies", "must be a list of strings"),
            ],
        ),
    ],
)
def test_struct_properties(metadata: dict[str, object], violations: list[tuple[str, str]]) -> None:
    reg = registration()
    reg.metadata.update(metadata)
    assert normalize(request(reg)) == [FieldViolation(f, d) for f, d in violations]


def test_a_struct_without_rules_is_not_checked() -> None:
    status = pb.HealthStatus(status=pb.HEALTH_STATE_HEALTHY)
    status.details.update({"x": "y" * 20000})
    assert normalize(status) == []


def test_well_known_messages_are_not_descended_into() -> None:
    reg = registration()
    reg.registration_time.seconds = -1  # a Timestamp: no project rules inside it
    reg.metadata.CopyFrom(struct_pb2.Struct())
    assert normalize(request(reg)) == []


# --- field paths ----------------------------------------------------------------------------------


def test_paths_use_lower_camel_case_json_names_at_every_depth() -> None:
    req = request()
    hc = req.registration.health_check
    hc.success_threshold = 11
    hc.grpc_check.timeout = 61
    req.registration.endpoint.tls.client_key = "k" * 16385
    assert sorted(fields(normalize(req))) == [
        "registration.endpoint.tls.clientKey",
        "registration.healthCheck.grpcCheck.timeout",
        "registration.healthCheck.successThreshold",
    ]


# --- free-form nesting depth (every Struct / Value / ListValue, declared rules or not) ------


def nested(depth: int) -> struct_pb2.Struct:
    """A Struct of exactly ``depth`` JSON levels: {"a": {"a": ... {"a": 1}}}."""
    return json_format.ParseDict(nested_json(depth), struct_pb2.Struct())


def nested_json(depth: int) -> dict[str, object]:
    value: dict[str, object] = {"a": 1}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_json_depth_counts_objects_and_arrays() -> None:
    assert json_depth(struct_pb2.Struct()) == 1
    assert json_depth(nested(3)) == 3
    value = json_format.ParseDict({"a": [[{"b": []}]], "c": 1}, struct_pb2.Struct())
    assert json_depth(value) == 5  # {} [ [ {} [
    assert json_depth(struct_pb2.Value(number_value=1)) == 0
    assert json_depth(json_format.ParseDict([[1]], struct_pb2.ListValue())) == 2


def test_metadata_at_the_depth_limit_passes_and_one_over_is_a_field_violation() -> None:
    req = request()
    req.registration.metadata.CopyFrom(nested(MAX_STRUCT_DEPTH))
    assert normalize(req) == []
    req.registration.metadata.CopyFrom(nested(MAX_STRUCT_DEPTH + 1))
    violation = only(normalize(req))
    assert violation.field == "registration.metadata"
    assert str(MAX_STRUCT_DEPTH) in violation.description


def test_depth_counts_arrays_too() -> None:
    req = request()
    too_deep: object = 1
    for _ in range(MAX_STRUCT_DEPTH):
        too_deep = [too_deep]
    json_format.ParseDict({"tags": ["x"], "deep": too_deep}, req.registration.metadata)
    assert fields(normalize(req)) == ["registration.metadata"]


def test_a_struct_without_declared_rules_is_capped_too() -> None:
    # HealthStatus.details declares no rules: the cap comes from its type, not from an option.
    assert pb.HealthStatus.DESCRIPTOR.fields_by_name["details"].GetOptions().ByteSize() == 0
    status = pb.HealthStatus(status=pb.HEALTH_STATE_HEALTHY)
    status.details.CopyFrom(nested(MAX_STRUCT_DEPTH))
    assert normalize(status) == []
    status.details.CopyFrom(nested(MAX_STRUCT_DEPTH + 1))
    assert fields(normalize(status)) == ["details"]


def test_health_update_details_are_capped() -> None:
    req = pb.UpdateHealthRequest(service_id=UUID)
    req.update.status = pb.HEALTH_STATE_HEALTHY
    req.update.details.CopyFrom(nested(MAX_STRUCT_DEPTH + 1))
    assert fields(normalize(req)) == ["update.details"]


def test_the_depth_limit_leaves_room_in_every_response_of_every_system() -> None:
    """The margin: a free-form field at protobuf depth k carrying MAX_STRUCT_DEPTH JSON levels
    reaches at most k + 3 * MAX_STRUCT_DEPTH levels (Struct > entry > Value per JSON level, plus
    one for a Value field), which must stay within the parsers' recursion limit."""
    deepest = {
        method.full_name: deepest_free_form(method.output_type)
        for system in SYSTEMS
        for file in system.files
        for service in file.services_by_name.values()
        for method in service.methods
    }
    assert deepest["lucid.discovery.v1.DiscoveryService.Watch"] == 5  # snapshot > ... > details
    for method, k in deepest.items():
        assert k + 3 * MAX_STRUCT_DEPTH < PROTOBUF_RECURSION_LIMIT, method


def test_the_deepest_response_at_the_limit_parses_and_the_old_attack_depth_did_not() -> None:
    def watch_snapshot(depth: int) -> bytes:
        response = pb.WatchResponse(type=pb.WATCH_EVENT_TYPE_SNAPSHOT)
        response.snapshot.instances.add().health.details.CopyFrom(nested(depth))
        return response.SerializeToString()

    parsed = pb.WatchResponse.FromString(watch_snapshot(MAX_STRUCT_DEPTH))
    assert json_depth(parsed.snapshot.instances[0].health.details) == MAX_STRUCT_DEPTH
    # 33 levels fit in a request (UpdateHealthRequest > update > details) but not in this
    # response: what poisoned every Discover page and Watch before the cap. 32 still parse here:
    # the cap leaves 12 JSON levels (36 protobuf levels by the conservative count) to spare.
    request_bytes = pb.UpdateHealthRequest(update=pb.HealthUpdate(details=nested(33)))
    pb.UpdateHealthRequest.FromString(request_bytes.SerializeToString())
    pb.WatchResponse.FromString(watch_snapshot(32))
    with pytest.raises(DecodeError):
        pb.WatchResponse.FromString(watch_snapshot(33))


# --- cross-field rules: (lucid.common.v1.message_rules) ---------------------------------------


def resolve(**kw: object) -> pb.ResolveRequest:
    return pb.ResolveRequest(service_name="api-gateway", **kw)  # type: ignore[arg-type]


def test_hash_key_is_required_with_consistent_hash() -> None:
    violation = only(normalize(resolve(load_balance=pb.LOAD_BALANCE_CONSISTENT_HASH)))
    assert violation == FieldViolation("hashKey", "is required when loadBalance is consistent-hash")
    assert normalize(resolve(load_balance=pb.LOAD_BALANCE_CONSISTENT_HASH, hash_key="u-1")) == []


def test_the_rule_does_not_fire_for_other_values_nor_the_default() -> None:
    assert normalize(resolve(load_balance=pb.LOAD_BALANCE_RANDOM)) == []
    defaulted = resolve()
    assert normalize(defaulted) == []
    assert defaulted.load_balance == pb.LOAD_BALANCE_ROUND_ROBIN


def test_every_declared_rule_of_every_system_compiles() -> None:
    for system in SYSTEMS:
        for file in system.files:
            for message in file.message_types_by_name.values():
                check_declarations(message)
    storage = storage_pb2.DESCRIPTOR.message_types_by_name["StoredInstance"]
    check_declarations(storage)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_in_free_form_fields_are_field_violations(bad: float) -> None:
    req = request()
    json_format.ParseDict({"tags": ["x"]}, req.registration.metadata)
    req.registration.metadata.update({"n": bad, "deep": {"list": [1, {"m": bad}]}})
    assert [(v.field, v.description) for v in normalize(req)] == [
        ("registration.metadata.deep.list[1].m", "must be a finite number (not NaN or Infinity)"),
        ("registration.metadata.n", "must be a finite number (not NaN or Infinity)"),
    ]
    # A free-form field without declared rules (HealthStatus.details) too.
    status = pb.HealthStatus(status=pb.HEALTH_STATE_HEALTHY)
    status.details.update({"x": bad})
    assert fields(normalize(status)) == ["details.x"]
    assert non_finite(struct_pb2.Value(number_value=1.5)) == []
