"""Property: canonical REST JSON -> proto -> wire bytes -> proto -> JSON is the identity, for
every request message of every routed method (and the test-only kitchen-sink message)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor
from google.protobuf.message_factory import GetMessageClass
from gw_dynamic_proto import echo_service
from gw_json_strategies import message_json
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.codec import decode_message, encode_message
from gateway.routes import compile_routes
from gateway.services import package_services


def _request_types() -> list[Descriptor]:
    routes = compile_routes([*package_services(), echo_service()]).routes
    found = {r.method.input_type.full_name: r.method.input_type for r in routes}
    return [found[name] for name in sorted(found)]


REQUEST_TYPES = _request_types()


def _roundtrip(descriptor: Descriptor, document: dict[str, Any]) -> dict[str, Any]:
    cls = GetMessageClass(descriptor)
    first = cls()
    decode_message(json.loads(json.dumps(document)), first)
    second = cls.FromString(first.SerializeToString())
    return json.loads(json.dumps(encode_message(second)))


def test_every_routed_request_type_is_covered() -> None:
    names = {d.full_name for d in REQUEST_TYPES}
    assert "lucid.discovery.v1.RegisterRequest" in names
    assert "lucid.discovery.v1.WatchRequest" in names
    assert "lucid.gwtest.v1.EchoRequest" in names


@pytest.mark.parametrize("descriptor", REQUEST_TYPES, ids=lambda d: d.full_name)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_json_proto_json_roundtrip(descriptor: Descriptor, data: st.DataObject) -> None:
    document = data.draw(message_json(descriptor))
    assert _roundtrip(descriptor, document) == document
