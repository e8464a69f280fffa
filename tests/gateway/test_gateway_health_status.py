"""HttpOptions.unhealthy_status: a reply whose healthy_field is false is answered that status
with the same body (gRPC stays OK), checked at route-building time and documented."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
from google.api import http_pb2
from gw_fake_backend import FAKE_AUTH
from openapi_spec_validator import validate
from test_gateway_routes import one_method_service

from gateway.http_rule import TemplateError
from gateway.openapi import build_openapi
from gateway.routes import compile_routes
from gateway.server import start_gateway
from gateway.services import select_services
from lucid_cp.api.lucid.common.v1 import options_pb2
from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["SidecarService"]
HEALTH = SERVICE.methods_by_name["GetSidecarHealth"]
HEALTH_PATH = "/api/v1/sidecar-proxy/health"


@dataclass
class FakeSidecars:
    """A grpc.aio server answering GetSidecarHealth with ``reply`` (the only method served)."""

    reply: pb.SidecarHealth
    requests: list[pb.GetSidecarHealthRequest]


async def _serve(fake: FakeSidecars) -> tuple[grpc.aio.Server, int]:
    async def health(request: pb.GetSidecarHealthRequest, _: Any) -> pb.SidecarHealth:
        fake.requests.append(request)
        return fake.reply

    handler = grpc.unary_unary_rpc_method_handler(
        health,
        request_deserializer=pb.GetSidecarHealthRequest.FromString,
        response_serializer=pb.SidecarHealth.SerializeToString,
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(SERVICE.full_name, {HEALTH.name: handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


@pytest.fixture
async def sidecars() -> AsyncIterator[tuple[FakeSidecars, httpx.AsyncClient]]:
    fake = FakeSidecars(pb.SidecarHealth(), [])
    server, port = await _serve(fake)
    gateway = await start_gateway(f"127.0.0.1:{port}", "127.0.0.1:0", services=[SERVICE])
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10.0, headers=FAKE_AUTH) as http:
            yield fake, http
    finally:
        await gateway.stop()
        await server.stop(0)


def _health(healthy: bool) -> pb.SidecarHealth:
    reply = pb.SidecarHealth(service_name="api-gateway", healthy=healthy, revision=7)
    if not healthy:
        reply.failed.append(pb.HealthCondition.Value("HEALTH_CONDITION_CONNECTED"))
    return reply


def test_the_route_carries_the_declared_health_options() -> None:
    route = compile_routes([SERVICE]).match("GET", HEALTH_PATH).route
    assert route.success_status == 200
    assert route.unhealthy_status == 503
    assert route.healthy_field is not None and route.healthy_field.name == "healthy"


async def test_healthy_is_200_and_unhealthy_503_with_the_same_body(
    sidecars: tuple[FakeSidecars, httpx.AsyncClient],
) -> None:
    fake, http = sidecars
    bodies = {}
    for healthy, status in ((True, 200), (False, 503)):
        fake.reply = _health(healthy)
        response = await http.get(HEALTH_PATH, params={"serviceName": "api-gateway"})
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json"
        bodies[healthy] = response.json()
    common = {"serviceName": "api-gateway", "sidecars": [], "revision": 7}
    assert bodies[True] == {**common, "healthy": True, "failed": []}
    # The body the same reply would get with 200, not the error shape.
    assert bodies[False] == {**common, "healthy": False, "failed": ["connected"]}
    assert [r.service_name for r in fake.requests] == ["api-gateway", "api-gateway"]


def test_the_document_lists_the_unhealthy_status() -> None:
    selected = select_services(None)
    doc = build_openapi(compile_routes(selected).routes, selected)
    validate(doc)
    responses = doc["paths"]["/sidecar-proxy/health"]["get"]["responses"]
    body = {"$ref": "#/components/schemas/SidecarHealth"}
    assert responses["200"]["content"]["application/json"]["schema"] == body
    unhealthy = responses["503"]["content"]["application/json"]["schema"]
    assert unhealthy == {"oneOf": [body, {"$ref": "#/components/schemas/ErrorResponse"}]}
    assert "healthy false" in responses["503"]["description"]
    # Methods without the option document no such status.
    others = doc["paths"]["/sidecar-proxy/rollout"]["get"]["responses"]
    assert "503" not in others


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (options_pb2.HttpOptions(unhealthy_status=503), "must be set together"),
        (options_pb2.HttpOptions(healthy_field="ok"), "must be set together"),
        (options_pb2.HttpOptions(unhealthy_status=302, healthy_field="ok"), "not a 4xx or 5xx"),
        (options_pb2.HttpOptions(unhealthy_status=600, healthy_field="ok"), "not a 4xx or 5xx"),
        (options_pb2.HttpOptions(unhealthy_status=503, healthy_field="nope"), "not a field"),
        (options_pb2.HttpOptions(unhealthy_status=503, healthy_field="count"), "not a bool"),
        (options_pb2.HttpOptions(unhealthy_status=503, healthy_field="oks"), "not a bool"),
        (
            options_pb2.HttpOptions(success_status=204, unhealthy_status=503, healthy_field="ok"),
            "needs a response body",
        ),
    ],
)
def test_bad_health_options_fail_at_startup(options: options_pb2.HttpOptions, message: str) -> None:
    service = one_method_service(http_pb2.HttpRule(get="/v1/health"), http_options=options)
    with pytest.raises(TemplateError, match=message):
        compile_routes([service])


def test_a_streaming_method_cannot_report_health() -> None:
    options = options_pb2.HttpOptions(unhealthy_status=503, healthy_field="ok")
    service = one_method_service(
        http_pb2.HttpRule(get="/v1/health"), http_options=options, server_streaming=True
    )
    with pytest.raises(TemplateError, match="unary methods only"):
        compile_routes([service])


def test_any_4xx_or_5xx_status_and_bool_field_are_accepted() -> None:
    options = options_pb2.HttpOptions(unhealthy_status=409, healthy_field="ok")
    service = one_method_service(http_pb2.HttpRule(get="/v1/health"), http_options=options)
    route = compile_routes([service]).routes[0]
    assert (route.unhealthy_status, route.healthy_field and route.healthy_field.name) == (
        409,
        "ok",
    )
