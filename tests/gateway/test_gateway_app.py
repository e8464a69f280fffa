"""The gateway over a scripted gRPC backend: transcoding, metadata, statuses, error shapes."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import grpc
import httpx
import pytest
from google.rpc import code_pb2
from grpc_health.v1 import health_pb2
from gw_fake_backend import FAKE_AUTH, FakeBackend, plain_status, status

from gateway.app import create_app
from gateway.transcode import MAX_BODY_BYTES
from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.clock import FakeClock

BASE = "/api/v1/service-discovery"
SID = "550e8400-e29b-41d4-a716-446655440000"
REGISTRATION = {
    "serviceId": SID,
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
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def assert_error(response: httpx.Response, status_code: int, code: str) -> dict[str, Any]:
    assert response.status_code == status_code, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code
    assert error["request_id"] == response.headers["x-request-id"]
    assert UUID_RE.match(error["request_id"])
    assert error["service"] == "lucid-cp" and error["version"] == "0.1.0"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z", error["timestamp"])
    assert set(error) == {
        "code",
        "message",
        "details",
        "request_id",
        "timestamp",
        "service",
        "version",
    }
    return dict(error)


async def test_register_forwards_the_body_field_and_answers_201(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    response = await client.post(f"{BASE}/services", json=REGISTRATION)
    assert response.status_code == 201
    assert response.json() == {
        **REGISTRATION,
        "status": "registered",
        "registeredAt": "2025-01-10T19:08:00Z",
        "ttl": 300,
        "revision": 7,
    }
    seen = backend.script.last("Register").request
    assert seen.registration.cluster == pb.CLUSTER_API_GATEWAY
    assert seen.registration.endpoint.protocol == pb.PROTOCOL_HTTPS


async def test_authorization_and_request_id_are_forwarded(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    given = str(uuid.uuid4())
    response = await client.get(
        f"{BASE}/services", headers={"Authorization": "Bearer abc.def", "X-Request-ID": given}
    )
    assert response.headers["x-request-id"] == given
    metadata = backend.script.last("Discover").metadata
    assert metadata["authorization"] == "Bearer abc.def"
    assert metadata["x-request-id"] == given


async def test_invalid_request_id_is_replaced(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    response = await client.get(f"{BASE}/services", headers={"X-Request-ID": "not-a-uuid"})
    generated = response.headers["x-request-id"]
    assert UUID_RE.match(generated)
    metadata = backend.script.last("Discover").metadata
    assert metadata["x-request-id"] == generated


async def test_deregister_answers_204_without_a_body(client: httpx.AsyncClient) -> None:
    response = await client.delete(f"{BASE}/services/{SID}")
    assert response.status_code == 204
    assert response.content == b""
    assert "content-type" not in response.headers


async def test_update_health_returns_the_response_body_field(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    response = await client.put(
        f"{BASE}/services/{SID}/health", json={"status": "unhealthy", "responseTime": 12.5}
    )
    assert response.status_code == 200
    assert response.json() == {
        "status": "unhealthy",
        "timestamp": "2025-01-10T19:08:00Z",
        "consecutiveFailures": 0,
        "consecutiveSuccesses": 1,
        "responseTime": 0.0,
    }
    seen = backend.script.last("UpdateHealth").request
    assert seen.service_id == SID and seen.update.response_time == 12.5


async def test_heartbeat_body_star_with_path_variable(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    response = await client.post(f"{BASE}/services/{SID}/heartbeat", json={"activeConnections": 4})
    assert response.status_code == 200
    assert response.json() == {"ttl": 300, "revision": 2**40}  # int64 as a JSON number
    seen = backend.script.last("Heartbeat").request
    assert (seen.service_id, seen.active_connections) == (SID, 4)
    empty = await client.post(f"{BASE}/services/{SID}/heartbeat")
    assert empty.status_code == 200
    assert not backend.script.last("Heartbeat").request.HasField("active_connections")


async def test_query_parameters_map_onto_request_fields(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    response = await client.get(
        f"{BASE}/services",
        params={
            "cluster": "tron-payment",
            "plane": "wallet",
            "status": "healthy",
            "limit": "5",
            "offset": "10",
            "service_name": "pay",
        },
    )
    assert response.status_code == 200
    assert response.json() == {"services": [], "total": 0, "limit": 5, "offset": 10, "revision": 0}
    seen = backend.script.last("Discover").request
    assert (seen.cluster, seen.plane, seen.status) == (
        pb.CLUSTER_TRON_PAYMENT,
        pb.PLANE_WALLET,
        pb.HEALTH_STATE_HEALTHY,
    )
    assert (seen.limit, seen.offset, seen.service_name) == (5, 10, "pay")


@pytest.mark.parametrize(
    ("query", "field", "description", "code"),
    [
        ("bogus=1", "bogus", "unknown query parameter", "LUCID_ERR_1904"),
        # A well-formed value the configuration does not allow: discovery's invalid config.
        ("cluster=CLUSTER_TRON_PAYMENT", "cluster", "must be one of", "LUCID_ERR_1004"),
        ("limit=ten", "limit", "expected an integer", "LUCID_ERR_1904"),
        ("limit=1&limit=2", "limit", "more than once", "LUCID_ERR_1904"),
        ("services=x", "services", "unknown query parameter", "LUCID_ERR_1904"),
    ],
)
async def test_bad_query_parameters_are_400(
    client: httpx.AsyncClient, query: str, field: str, description: str, code: str
) -> None:
    error = assert_error(await client.get(f"{BASE}/services?{query}"), 400, code)
    [violation] = error["details"]["fieldViolations"]
    assert violation["field"] == field
    assert description in violation["description"]


async def test_path_bound_and_body_fields_cannot_come_from_the_query(
    client: httpx.AsyncClient,
) -> None:
    resolve = await client.get(f"{BASE}/services/api-gateway/resolve?serviceName=other")
    assert_error(resolve, 400, "LUCID_ERR_1904")
    register = await client.post(f"{BASE}/services?registration.serviceId={SID}", json=REGISTRATION)
    assert_error(register, 400, "LUCID_ERR_1904")
    heartbeat = await client.post(f"{BASE}/services/{SID}/heartbeat?activeConnections=3", json={})
    assert_error(heartbeat, 400, "LUCID_ERR_1904")


async def test_resolve_path_and_enum_query(client: httpx.AsyncClient, backend: FakeBackend) -> None:
    response = await client.get(
        f"{BASE}/services/api-gateway/resolve?loadBalance=least-connections"
    )
    assert response.json() == {
        "host": "api-gateway.lucid.onion",
        "port": 8080,
        "protocol": "https",
        "serviceName": "api-gateway",
        "status": "healthy",
        "revision": 0,
    }
    seen = backend.script.last("Resolve").request
    assert seen.load_balance == pb.LOAD_BALANCE_LEAST_CONNECTIONS


async def test_new_annotated_rpc_is_reachable_without_gateway_changes(
    echo_client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    response = await echo_client.get(
        "/api/v1/echo/bob%20smith?count=3&tags=a&tags=b&kitchen.nested.name=x"
        "&kitchen.planes=ops&kitchen.planes=chain&kitchen.u64=18446744073709551615"
        "&kitchen.at=2025-01-10T19:08:00Z&kitchen.flag=true"
    )
    assert response.status_code == 202  # http_options.success_status of the test service
    body = response.json()
    assert body["name"] == "bob smith" and body["count"] == 3 and body["tags"] == ["a", "b"]
    kitchen = body["kitchen"]
    assert kitchen["nested"] == {"name": "x", "level": 0}
    assert kitchen["planes"] == ["ops", "chain"]
    assert kitchen["u64"] == 2**64 - 1
    assert kitchen["at"] == "2025-01-10T19:08:00Z"
    assert kitchen["flag"] is True


async def test_body_field_and_response_body_on_a_custom_verb(
    echo_client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    response = await echo_client.post(
        "/api/v1/echo/bob:kitchen?count=2", json={"s32": -5, "byFlag": {"false": "no"}}
    )
    assert response.status_code == 200
    rendered = response.json()
    assert rendered["s32"] == -5 and rendered["byFlag"] == {"false": "no"}
    seen = backend.script.last("Echo").request
    assert (seen.name, seen.count, seen.kitchen.s32) == ("bob", 2, -5)
    bad = await echo_client.post("/api/v1/echo/bob:kitchen?kitchen.s32=1", json={})
    assert_error(bad, 400, "LUCID_ERR_1904")


async def test_backend_error_details_become_the_error_body(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.script.errors["Register"] = status(
        code_pb2.ALREADY_EXISTS,
        "service instance is already registered",
        "LUCID_ERR_1003",
        metadata={"serviceId": SID, "request_id": "ignored"},
    )
    error = assert_error(
        await client.post(f"{BASE}/services", json=REGISTRATION), 409, "LUCID_ERR_1003"
    )
    assert error["message"] == "service instance is already registered"
    assert error["details"] == {"serviceId": SID}


async def test_backend_field_violations_are_in_body_terms(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.script.errors["Register"] = status(
        code_pb2.INVALID_ARGUMENT,
        "invalid",
        "LUCID_ERR_1004",
        violations=[("registration.endpoint.port", "must be at least 1")],
    )
    error = assert_error(
        await client.post(f"{BASE}/services", json=REGISTRATION), 400, "LUCID_ERR_1004"
    )
    assert error["details"]["fieldViolations"] == [
        {"field": "endpoint.port", "description": "must be at least 1"}
    ]


async def test_rate_limited_answers_429_with_retry_after(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.script.errors["Resolve"] = status(
        code_pb2.RESOURCE_EXHAUSTED, "slow down", "LUCID_ERR_1903", retry_seconds=2.5
    )
    response = await client.get(f"{BASE}/services/api-gateway/resolve")
    error = assert_error(response, 429, "LUCID_ERR_1903")
    assert response.headers["retry-after"] == "3"
    assert error["details"]["retryAfterSeconds"] == 2.5


async def test_unavailable_without_details_falls_back(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.script.errors["Resolve"] = plain_status(grpc.StatusCode.UNAVAILABLE, "connect failed")
    response = await client.get(f"{BASE}/services/api-gateway/resolve")
    # No ErrorInfo: the control plane did not answer; it is not the store that is down.
    error = assert_error(response, 503, "LUCID_ERR_1909")
    assert error["message"] == "connect failed"
    assert "retry-after" not in response.headers


async def test_backend_crash_is_500_without_internals(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.script.crash.add("Discover")
    error = assert_error(await client.get(f"{BASE}/services"), 500, "LUCID_ERR_1999")
    assert "Traceback" not in error["message"]


async def test_deadline_exceeded_is_504(
    echo_client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.script.hang.add("Resolve")
    assert_error(await echo_client.get(f"{BASE}/services/x/resolve"), 504, "LUCID_ERR_1910")


async def test_backend_down_is_503(client: httpx.AsyncClient, backend: FakeBackend) -> None:
    await backend.stop()
    assert_error(await client.get(f"{BASE}/services"), 503, "LUCID_ERR_1909")
    ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert (await client.get("/healthz")).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", None),
        (b"[]", ""),
        (b'{"serviceId": 5}', "serviceId"),
        (b'{"serviceIdd": "x"}', "serviceIdd"),
        (b'{"endpoint": {"port": NaN}}', None),
        (b"\xff\xfe", None),
    ],
)
async def test_malformed_bodies_are_400(
    client: httpx.AsyncClient, backend: FakeBackend, body: bytes, field: str | None
) -> None:
    response = await client.post(
        f"{BASE}/services", content=body, headers={"content-type": "application/json"}
    )
    error = assert_error(response, 400, "LUCID_ERR_1904")
    if field is not None:
        assert error["details"]["fieldViolations"][0]["field"] == field
    assert not [c for c in backend.script.calls if c.method == "Register"]


async def test_body_field_route_requires_a_body(client: httpx.AsyncClient) -> None:
    assert_error(await client.post(f"{BASE}/services"), 400, "LUCID_ERR_1904")


async def test_oversize_body_is_413(client: httpx.AsyncClient) -> None:
    big = b'{"serviceName": "' + b"a" * MAX_BODY_BYTES + b'"}'
    assert_error(await client.post(f"{BASE}/services", content=big), 413, "LUCID_ERR_1904")

    async def chunks() -> Any:
        for _ in range(5):
            yield b" " * (MAX_BODY_BYTES // 4)

    chunked = await client.post(f"{BASE}/services", content=chunks())
    assert_error(chunked, 413, "LUCID_ERR_1904")


async def test_unknown_route_is_404_and_wrong_method_405(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/api/v1/nothing-here"), 404, "LUCID_ERR_1907")
    assert_error(await client.get("/"), 404, "LUCID_ERR_1907")
    response = await client.patch(f"{BASE}/services")
    assert_error(response, 405, "LUCID_ERR_1904")
    assert response.headers["allow"] == "GET, POST"
    weird = await client.request("PROPFIND", "/healthz")
    assert_error(weird, 404, "LUCID_ERR_1907")
    # A newline in the path ("%0A") still reaches the gateway's own routing and error shape.
    assert_error(await client.get("/api/v1/nothing%0Ahere"), 404, "LUCID_ERR_1907")


async def test_unexpected_gateway_failure_is_500_with_request_id(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*args: object) -> None:
        raise KeyError("internal detail")

    monkeypatch.setattr("gateway.app.build_request", explode)
    error = assert_error(await client.get(f"{BASE}/services"), 500, "LUCID_ERR_1999")
    assert "internal detail" not in error["message"]


async def test_health_endpoints(client: httpx.AsyncClient, backend: FakeBackend) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).status_code == 200
    await backend.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert (await client.get("/readyz")).status_code == 503


async def test_openapi_document_is_served(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response.json()["openapi"] == "3.0.3"


async def test_error_timestamps_come_from_the_injected_clock(backend: FakeBackend) -> None:
    app = create_app(backend.target, clock=FakeClock(now=1736536080.25))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        response = await http.get("/api/v1/nothing")
    assert response.json()["error"]["timestamp"] == "2025-01-10T19:08:00.250Z"


async def test_the_body_deadline_runs_on_the_injected_clock(backend: FakeBackend) -> None:
    clock = FakeClock()
    app = create_app(backend.target, clock=clock, body_timeout=30.0)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": f"{BASE}/services",
        "raw_path": f"{BASE}/services".encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"gateway"),
            (b"content-type", b"application/json"),
            (b"content-length", b"100"),
            (b"authorization", FAKE_AUTH["Authorization"].encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    waiting = asyncio.Event()
    parts = [{"type": "http.request", "body": b'{"servic', "more_body": True}]

    async def receive() -> dict[str, Any]:
        if parts:
            return parts.pop(0)
        waiting.set()
        await asyncio.Event().wait()  # the rest of the body never comes
        raise AssertionError("unreachable")

    sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    task = asyncio.create_task(app(scope, receive, sent.put))
    try:
        await asyncio.wait_for(waiting.wait(), 5.0)
        # The deadline's timer task was scheduled before the body was read: it waits by now.
        assert clock.sleepers == 1
        clock.advance(30.0)
        start = await asyncio.wait_for(sent.get(), 5.0)
        assert start["status"] == 408
        await asyncio.wait_for(task, 5.0)
        assert not [c for c in backend.script.calls if c.method == "Register"]
    finally:
        task.cancel()
        await app.state.gateway.backend.close()
