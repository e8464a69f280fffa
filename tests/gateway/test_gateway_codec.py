"""The REST JSON codec: seed examples, enum wire strings, numbers, well-known types, errors."""

from __future__ import annotations

import math
from typing import Any

import pytest
from google.api import http_pb2, httpbody_pb2
from gw_dynamic_proto import message_class

from gateway.codec import CodecError, decode_message, decode_text, encode_field, encode_message
from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb

SEED_REGISTRATION = {
    "serviceId": "550e8400-e29b-41d4-a716-446655440000",
    "serviceName": "api-gateway",
    "cluster": "api-gateway",
    "plane": "ops",
    "endpoint": {
        "host": "api-gateway.lucid.onion",
        "port": 8080,
        "protocol": "https",
        "path": "/api/v1",
    },
    "version": "1.0.0",
}
# api-spec.md, "Response Examples".
SEED_REGISTRATION_SUCCESS = {
    **SEED_REGISTRATION,
    "status": "registered",
    "registeredAt": "2025-01-10T19:08:00Z",
}
SEED_DISCOVERY_RESPONSE = {
    "services": [
        {
            "serviceId": "550e8400-e29b-41d4-a716-446655440000",
            "serviceName": "api-gateway",
            "cluster": "api-gateway",
            "plane": "ops",
            "endpoint": {"host": "api-gateway.lucid.onion", "port": 8080, "protocol": "https"},
            "version": "1.0.0",
            "status": "healthy",
            "lastHealthCheck": "2025-01-10T19:08:00Z",
        }
    ],
    "total": 1,
    "limit": 100,
    "offset": 0,
}


def decode(cls: Any, document: Any) -> Any:
    message = cls()
    decode_message(document, message)
    return message


def error_of(cls: Any, document: Any) -> CodecError:
    with pytest.raises(CodecError) as caught:
        decode(cls, document)
    return caught.value


def test_seed_registration_decodes_to_enum_numbers() -> None:
    reg = decode(pb.ServiceRegistration, SEED_REGISTRATION)
    assert reg.cluster == pb.CLUSTER_API_GATEWAY
    assert reg.plane == pb.PLANE_OPS
    assert reg.endpoint.protocol == pb.PROTOCOL_HTTPS
    assert reg.endpoint.port == 8080


def test_register_response_renders_the_seed_example() -> None:
    response = decode(pb.RegisterResponse, SEED_REGISTRATION_SUCCESS)
    rendered = encode_message(response)
    # Exactly the seed's keys, plus the numbers the seed does not show but the proto has.
    assert {k: rendered[k] for k in SEED_REGISTRATION_SUCCESS} == SEED_REGISTRATION_SUCCESS
    assert set(rendered) - set(SEED_REGISTRATION_SUCCESS) == {"ttl", "revision"}


def test_discover_response_renders_the_seed_example_with_zero_numbers() -> None:
    response = decode(pb.DiscoverResponse, SEED_DISCOVERY_RESPONSE)
    rendered = encode_message(response)
    for key in ("total", "limit", "offset"):
        assert rendered[key] == SEED_DISCOVERY_RESPONSE[key]
    instance = rendered["services"][0]
    seed_instance = SEED_DISCOVERY_RESPONSE["services"][0]  # type: ignore[index]
    assert {k: instance[k] for k in seed_instance} == seed_instance
    empty = encode_message(pb.DiscoverResponse())
    assert empty == {"services": [], "total": 0, "limit": 0, "offset": 0, "revision": 0}


def test_unspecified_enums_and_empty_strings_are_omitted() -> None:
    rendered = encode_message(pb.ResolveResponse(port=1))
    assert "protocol" not in rendered and "status" not in rendered and "host" not in rendered
    assert rendered["port"] == 1


def test_optional_fields_are_emitted_only_when_set() -> None:
    assert "ttl" not in encode_message(pb.ServiceRegistration())
    assert encode_message(pb.ServiceRegistration(ttl=0))["ttl"] == 0
    assert "loadBalance" not in encode_message(
        pb.ResolveRequest(load_balance=pb.LOAD_BALANCE_UNSPECIFIED)
    )


def test_int64_is_a_json_number_and_accepts_strings() -> None:
    assert encode_message(pb.DeregisterResponse(revision=2**40)) == {"revision": 2**40}
    assert decode(pb.WatchRequest, {"startRevision": "1099511627776"}).start_revision == 2**40
    assert decode(pb.WatchRequest, {"startRevision": 12.0}).start_revision == 12
    assert error_of(pb.WatchRequest, {"startRevision": 2**63}).field == "startRevision"


@pytest.mark.parametrize("bad", [True, 1.5, "1.5", "x", "12abc", [], {}])
def test_integers_reject_other_json_types(bad: Any) -> None:
    error = error_of(pb.DiscoverRequest, {"limit": bad})
    assert error.field == "limit" and "integer" in error.description


def test_int32_range_is_enforced() -> None:
    assert error_of(pb.DiscoverRequest, {"limit": 2**31}).description.startswith(
        "integer out of range"
    )


def test_enums_accept_only_wire_strings() -> None:
    assert decode(pb.ResolveRequest, {"loadBalance": "least-connections"}).load_balance == (
        pb.LOAD_BALANCE_LEAST_CONNECTIONS
    )
    for bad in ("LOAD_BALANCE_RANDOM", "Random", 3, "LOAD_BALANCE_UNSPECIFIED"):
        error = error_of(pb.ResolveRequest, {"loadBalance": bad})
        assert error.field == "loadBalance"
        assert "round-robin" in error.description


def test_proto_field_names_are_accepted_and_unknown_fields_rejected() -> None:
    assert decode(pb.ServiceEndpoint, {"host": "h", "port": 1}).port == 1
    assert decode(pb.ServiceRegistration, {"service_name": "abc"}).service_name == "abc"
    error = error_of(pb.RegisterRequest, {"registration": {"endpoint": {"hots": "x"}}})
    assert (error.field, error.description) == ("registration.endpoint.hots", "unknown field")


def test_wrong_json_types_name_the_field() -> None:
    assert error_of(pb.ServiceEndpoint, {"host": 5}).field == "host"
    assert error_of(pb.ServiceEndpoint, {"tls": {"enabled": "yes"}}).field == "tls.enabled"
    assert error_of(pb.HttpCheck, {"expectedStatus": [200, "x"]}).field == "expectedStatus[1]"
    assert error_of(pb.HttpCheck, {"expectedStatus": 200}).description == "expected a JSON array"
    assert error_of(pb.HttpCheck, {"headers": {"a": 1}}).field == "headers.a"
    assert error_of(pb.RegisterRequest, []).description == "expected a JSON object"


def test_null_is_rejected_except_for_value_and_wrappers() -> None:
    assert error_of(pb.ServiceRegistration, {"endpoint": None}).field == "endpoint"
    assert error_of(pb.ServiceRegistration, {"weight": None}).field == "weight"
    assert error_of(pb.HttpCheck, {"expectedStatus": [None]}).field == "expectedStatus[0]"
    kitchen = decode(message_class("Kitchen"), {"wrapped": None, "anyValue": None})
    assert not kitchen.HasField("wrapped") and kitchen.HasField("any_value")


def test_timestamps_are_rfc3339_and_normalized_to_utc() -> None:
    reg = decode(pb.ServiceRegistration, {"registrationTime": "2025-01-10T21:08:00+02:00"})
    assert encode_message(reg)["registrationTime"] == "2025-01-10T19:08:00Z"
    assert error_of(pb.ServiceRegistration, {"registrationTime": "yesterday"}).field == (
        "registrationTime"
    )
    assert error_of(pb.ServiceRegistration, {"registrationTime": 1736536080}).field == (
        "registrationTime"
    )


def test_struct_is_free_form_and_integral_numbers_stay_integers() -> None:
    document = {"metadata": {"tags": ["a", "b"], "n": 3, "x": 1.5, "o": {"z": None}, "e": []}}
    reg = decode(pb.ServiceRegistration, document)
    assert encode_message(reg)["metadata"] == document["metadata"]


def test_double_handles_non_finite_strings() -> None:
    update = decode(pb.HealthUpdate, {"responseTime": "Infinity"})
    assert math.isinf(update.response_time)
    assert encode_message(update)["responseTime"] == "Infinity"
    assert decode(pb.HealthUpdate, {"responseTime": "12.5"}).response_time == 12.5
    assert error_of(pb.HealthUpdate, {"responseTime": "inf"}).field == "responseTime"


def test_float32_renders_its_shortest_decimal() -> None:
    kitchen = decode(message_class("Kitchen"), {"f32": 0.1})
    assert encode_message(kitchen)["f32"] == 0.1
    assert error_of(message_class("Kitchen"), {"f32": 1e39}).field == "f32"


def test_maps_with_int_and_bool_keys() -> None:
    kitchen = decode(message_class("Kitchen"), {"byNum": {"7": "x"}, "byFlag": {"true": "y"}})
    rendered = encode_message(kitchen)
    assert rendered["byNum"] == {"7": "x"} and rendered["byFlag"] == {"true": "y"}
    assert error_of(message_class("Kitchen"), {"byNum": {"seven": "x"}}).field == "byNum.seven"
    assert error_of(message_class("Kitchen"), {"byFlag": {"yes": "x"}}).field == "byFlag.yes"


def test_oneof_accepts_one_member_only() -> None:
    assert decode(http_pb2.HttpRule, {"get": "/a"}).get == "/a"
    error = error_of(http_pb2.HttpRule, {"get": "/a", "post": "/b"})
    assert "only one" in error.description


def test_bytes_are_base64_standard_or_urlsafe() -> None:
    body = decode(httpbody_pb2.HttpBody, {"data": "-_8="})
    assert body.data == b"\xfb\xff"
    assert encode_message(body)["data"] == "+/8="
    assert error_of(httpbody_pb2.HttpBody, {"data": "%%%"}).field == "data"


def test_wrappers_duration_and_value() -> None:
    kitchen = decode(
        message_class("Kitchen"),
        {"wrapped": "9007199254740993", "wait": "1.5s", "anyValue": None, "flag": False},
    )
    rendered = encode_message(kitchen)
    assert rendered["wrapped"] == 9007199254740993
    assert rendered["wait"] == "1.500s"
    assert rendered["anyValue"] is None
    assert rendered["flag"] is False
    assert error_of(message_class("Kitchen"), {"wait": "soon"}).field == "wait"


def test_encode_field_renders_one_field() -> None:
    reply = pb.UpdateHealthResponse(health=pb.HealthStatus(status=pb.HEALTH_STATE_HEALTHY))
    field = reply.DESCRIPTOR.fields_by_name["health"]
    assert encode_field(reply, field)["status"] == "healthy"


def test_decode_text_parses_url_values_by_field_type() -> None:
    request = pb.DiscoverRequest()
    fields = request.DESCRIPTOR.fields_by_name
    decode_text(request, fields["limit"], "5", "limit")
    decode_text(request, fields["cluster"], "tron-payment", "cluster")
    assert (request.limit, request.cluster) == (5, pb.CLUSTER_TRON_PAYMENT)
    kitchen = message_class("Kitchen")()
    kfields = kitchen.DESCRIPTOR.fields_by_name
    decode_text(kitchen, kfields["planes"], "ops", "planes")
    decode_text(kitchen, kfields["planes"], "wallet", "planes")
    decode_text(kitchen, kfields["flag"], "TRUE", "flag")
    assert list(kitchen.planes) == [pb.PLANE_OPS, pb.PLANE_WALLET] and kitchen.flag.value
    with pytest.raises(CodecError):
        decode_text(kitchen, kfields["nested"], "x", "nested")
    with pytest.raises(CodecError):
        decode_text(kitchen, kfields["by_num"], "x", "byNum")
