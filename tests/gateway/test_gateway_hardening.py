"""Issue 8 (hardening), over the wire: a real gateway on 127.0.0.1:0 in front of the real
control plane (or the scripted backend where a transport failure must be staged)."""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from gw_fake_backend import FAKE_AUTH, FakeBackend, plain_status
from gw_live import ADMIN, BASE, Stack, bearer, registration, start_stack, without_rate_limits

from gateway.app import MAX_AUTHORIZATION_BYTES, MAX_LOGGED_CHARS
from gateway.limits import HttpLimits
from gateway.marker import MALFORMED_HEADER as GATEWAY_HEADER
from gateway.marker import MAX_MARKER_CHARS as GATEWAY_MAX_CHARS
from gateway.marker import MAX_VIOLATIONS as GATEWAY_MAX_VIOLATIONS
from gateway.marker import encode_marker
from gateway.server import start_gateway
from gateway.transcode import MAX_BODY_BYTES, MAX_JSON_DEPTH, json_depth_exceeds
from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.api.lucid.discovery.v1 import discovery_pb2_grpc
from lucid_cp.discovery.errors import InvalidServiceConfiguration
from lucid_cp.discovery.module import DiscoverySystem
from lucid_cp.errors import MalformedRequest
from lucid_cp.rpc.malformed import (
    MALFORMED_HEADER,
    MAX_MARKER_CHARS,
    MAX_VIOLATIONS,
    error_from_marker,
)

WAIT = 10.0
JSON_HEADERS = {"content-type": "application/json"}


@pytest.fixture
async def open_stack() -> AsyncIterator[Stack]:
    live = await start_stack(without_rate_limits())
    try:
        yield live
    finally:
        await live.stop()


@pytest.fixture
async def http(open_stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=open_stack.gateway.url, timeout=WAIT) as client:
        yield client


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["code"] == code, body
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    assert "retry-after" not in response.headers
    return dict(body)


# -- 1. nothing a client sends reaches an unhandled exception ------------------------------------

DEEP = b"[" * 100_000 + b"]" * 100_000
# A string never closed, full of escaped quotes, then brackets enough to need a scan: the depth
# check once rescanned the rest of the body from every quote (quadratic: minutes at 1 MiB).
UNCLOSED = b'"' + b'\\"' * ((MAX_BODY_BYTES - 200) // 2) + b"[]" * 70
HOSTILE_BODIES = [
    pytest.param(DEEP, "", id="deep"),
    pytest.param(UNCLOSED, "", id="unclosed-string-of-escaped-quotes"),
    pytest.param(UNCLOSED + b"\\", "", id="unclosed-string-ending-in-a-backslash"),
    pytest.param(b"[" * 10 + b'"' + b"[" * 100, "", id="unclosed-string-after-nesting"),
    # Brackets inside a string do not nest, nor after an escaped quote.
    pytest.param(b'{"bogus": "' + b"[" * 100 + b'"}', "bogus", id="brackets-in-a-string"),
    pytest.param(b'{"bogus": "\\"' + b"{" * 100 + b'"}', "bogus", id="escaped-quote"),
    pytest.param(b'{"serviceName": "\\ud800"}', "serviceName", id="lone-surrogate"),
    pytest.param(b'{"metadata": {"\\udfff": 1}}', "metadata", id="lone-surrogate-key"),
    pytest.param(b'{"serviceName": "x", "bogus\\ud800": 1}', "", id="unknown-surrogate-key"),
]


@pytest.mark.parametrize(("body", "field"), HOSTILE_BODIES)
async def test_hostile_bodies_are_400_or_401_never_500(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, body: bytes, field: str
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"{BASE}/services"
    error_of(await http.post(url, content=body, headers=JSON_HEADERS), 401, "LUCID_ERR_1901")
    err = error_of(
        await http.post(url, content=body, headers={**JSON_HEADERS, **bearer()}),
        400,
        "LUCID_ERR_1904",
    )
    if field:
        assert err["details"]["fieldViolations"][0]["field"].startswith(field)
    assert all(len(r.getMessage()) <= 2 * MAX_LOGGED_CHARS for r in caplog.records)


async def test_json_nesting_is_capped_by_the_gateway(http: httpx.AsyncClient) -> None:
    def nested(depth: int) -> bytes:
        inner = b'{"a":' * (depth - 2) + b"1" + b"}" * (depth - 2)
        return b'{"serviceName":"api-gateway","metadata":{"deep":' + inner + b"}}"

    url = f"{BASE}/services"
    headers = {**JSON_HEADERS, **bearer()}
    too_deep = await http.post(url, content=nested(MAX_JSON_DEPTH + 1), headers=headers)
    assert "deeper than 64" in error_of(too_deep, 400, "LUCID_ERR_1904")["message"]
    # Within the gateway's cap the body is parsed and reaches the server's own rules.
    allowed = await http.post(url, content=nested(MAX_JSON_DEPTH), headers=headers)
    assert allowed.status_code == 400 and "deeper than" not in allowed.text


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize(
    ("body", "exceeds"),
    [
        pytest.param(_nested(MAX_JSON_DEPTH), False, id="at-the-cap"),
        pytest.param(_nested(MAX_JSON_DEPTH + 1), True, id="over-the-cap"),
        pytest.param(b'["' + b"[" * 100 + b'"]', False, id="brackets-in-a-string"),
        pytest.param(
            b'["' + b"]" * 100 + b'", ' + _nested(MAX_JSON_DEPTH) + b"]",
            True,
            id="closing-brackets-in-a-string",
        ),
        pytest.param(b'["\\"' + b"[" * 100 + b'"]', False, id="escaped-quote"),
        pytest.param(b'["\\\\", ' + _nested(MAX_JSON_DEPTH) + b"]", True, id="escaped-backslash"),
        pytest.param(b'"' + b"[" * 100, False, id="unclosed-string"),
        pytest.param(b"[" * (MAX_JSON_DEPTH + 1) + b'"', True, id="unclosed-after-nesting"),
        pytest.param(b'["\\' + b"[" * 100, False, id="escape-of-a-bracket-unclosed"),
        pytest.param(b'["' + b"[" * 100 + b"\\", False, id="lone-backslash-at-the-end"),
        pytest.param(b'["\\\n' + b"[" * 100 + b'"]', False, id="escaped-newline"),
        pytest.param(
            b'["\\\n", ' + _nested(MAX_JSON_DEPTH) + b"]", True, id="after-an-escaped-newline"
        ),
    ],
)
def test_json_depth_skips_strings(body: bytes, exceeds: bool) -> None:
    assert json_depth_exceeds(body) is exceeds


def test_json_depth_scan_is_linear_on_hostile_bodies() -> None:
    bodies = [
        UNCLOSED,
        UNCLOSED + b"\\",
        b'"' + b"\\\n" * ((MAX_BODY_BYTES - 200) // 2) + b"[]" * 70,
        b'"' + b'\n"' * ((MAX_BODY_BYTES - 200) // 2) + b"[]" * 70,
        b"[]" * (MAX_BODY_BYTES // 2),
        b"[" + b'"[",' * (MAX_BODY_BYTES // 5) + b"1]",
    ]
    for body in bodies:
        assert len(body) <= MAX_BODY_BYTES
        started = time.monotonic()
        assert not json_depth_exceeds(body)
        # Linear: tens of milliseconds; the quadratic scan took minutes on the first body.
        assert time.monotonic() - started < 5.0


async def test_non_ascii_authorization_is_401(http: httpx.AsyncClient) -> None:
    for value in (b"Bearer \xff\xfe", "Bearer é".encode("latin-1"), b"Bearer \xe2\x98\x83"):
        response = await http.get(f"{BASE}/services", headers={"authorization": value})
        error_of(response, 401, "LUCID_ERR_1901")


# -- 2. oversized tokens are refused, not rate limited ---------------------------------------------


async def test_oversized_token_is_401_without_internal_sizes(http: httpx.AsyncClient) -> None:
    for size in (MAX_AUTHORIZATION_BYTES + 1, 20_000):
        headers = {"authorization": "Bearer " + "a" * size}
        err = error_of(await http.get(f"{BASE}/services", headers=headers), 401, "LUCID_ERR_1901")
        assert "metadata" not in err["message"]


async def test_grpc_own_resource_exhausted_is_not_429(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.script.errors["Discover"] = plain_status(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "received metadata size exceeds soft limit (9000 vs. 8192)",
    )
    err = error_of(await client.get(f"{BASE}/services"), 400, "LUCID_ERR_1911")
    assert "8192" not in err["message"] and "9000" not in err["message"]


# -- 4. authentication before validation ------------------------------------------------------------


async def test_credentials_are_checked_before_the_request(http: httpx.AsyncClient) -> None:
    url = f"{BASE}/services?access_token=x"
    error_of(await http.get(url), 401, "LUCID_ERR_1901")
    bad = {"authorization": "Bearer not.a.jwt"}
    error_of(await http.get(url, headers=bad), 401, "LUCID_ERR_1901")
    error_of(await http.post(f"{BASE}/services", content=b"{", headers=bad), 401, "LUCID_ERR_1901")
    err = error_of(await http.get(url, headers=ADMIN), 400, "LUCID_ERR_1904")
    assert err["details"]["fieldViolations"][0]["field"] == "access_token"


async def test_a_grpc_client_sending_the_marker_only_fails_its_own_call(open_stack: Stack) -> None:
    marker = encode_marker("made up", [("serviceName", "nope")], invalid=True)
    async with grpc.aio.insecure_channel(open_stack.plane.grpc_target) as channel:
        stub = discovery_pb2_grpc.DiscoveryServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await stub.Resolve(pb.ResolveRequest(), metadata=((MALFORMED_HEADER, marker),))
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
        token = ADMIN["Authorization"]
        md = (("authorization", token), (MALFORMED_HEADER, marker))
        with pytest.raises(grpc.aio.AioRpcError) as marked:
            await stub.Resolve(pb.ResolveRequest(service_name="api-gateway"), metadata=md)
        assert marked.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_marker_round_trips_and_stays_bounded() -> None:
    # The format is stated on both sides (the gateway imports nothing from the server).
    assert (GATEWAY_HEADER, GATEWAY_MAX_CHARS, GATEWAY_MAX_VIOLATIONS) == (
        MALFORMED_HEADER,
        MAX_MARKER_CHARS,
        MAX_VIOLATIONS,
    )
    error = error_from_marker(
        encode_marker("bad", [("cluster", "must be one of")], invalid=True),
        InvalidServiceConfiguration,
    )
    assert isinstance(error, InvalidServiceConfiguration)
    assert [(v.field, v.description) for v in error.violations] == [("cluster", "must be one of")]
    huge = encode_marker("\u2603" * 10_000, [("\x00" * 5000, "\u00e9" * 5000)] * 10, invalid=False)
    assert len(huge) <= MAX_MARKER_CHARS and huge.isascii()
    assert isinstance(error_from_marker(huge, InvalidServiceConfiguration), MalformedRequest)
    garbage = error_from_marker("{not json", InvalidServiceConfiguration)
    assert isinstance(garbage, MalformedRequest)
    deep = "[" * 1000 + "]" * 1000  # a client may send any marker: never an unhandled error
    assert isinstance(error_from_marker(deep, InvalidServiceConfiguration), MalformedRequest)


# -- 5. one field named twice -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'"serviceName": "api-gateway", "service_name": "other"', "service_name"),
        (b'"serviceName": "api-gateway", "serviceName": "other"', "serviceName"),
        (b'"endpoint": {"host": "h.lucid.onion", "port": 1, "port": 2}', "endpoint.port"),
        (b'"metadata": {"a": 1, "a": 2}', "metadata.a"),
    ],
)
async def test_a_field_or_key_given_twice_is_400(
    http: httpx.AsyncClient, raw: bytes, field: str
) -> None:
    body = b"{" + raw + b', "version": "1.0.0"}'
    response = await http.post(
        f"{BASE}/services", content=body, headers={**JSON_HEADERS, **bearer()}
    )
    err = error_of(response, 400, "LUCID_ERR_1904")
    assert [v["field"] for v in err["details"]["fieldViolations"]] == [field]


# -- 7. numbers in error details are numbers ------------------------------------------------------------


async def test_error_details_keep_their_json_types(http: httpx.AsyncClient) -> None:
    body = registration()
    headers = bearer(body["serviceName"])
    assert (await http.post(f"{BASE}/services", json=body, headers=headers)).status_code == 201
    again = await http.post(f"{BASE}/services", json=body, headers=headers)
    details = error_of(again, 409, "LUCID_ERR_1003")["details"]
    assert isinstance(details["registeredRevision"], int) and details["registeredRevision"] > 0
    assert details["serviceId"] == body["serviceId"]


# -- 8. Drain and Heartbeat bodies are optional, in the document and on the wire --------------------------


async def test_optional_bodies_agree_with_the_openapi_document(http: httpx.AsyncClient) -> None:
    document = (await http.get("/api/v1/openapi.json")).json()
    paths = document["paths"]
    sid = "/service-discovery/services/{serviceId}"  # relative to the server URL /api/v1
    assert paths[f"{sid}/drain"]["post"]["requestBody"]["required"] is False
    assert paths[f"{sid}/heartbeat"]["post"]["requestBody"]["required"] is False
    assert paths["/service-discovery/services"]["post"]["requestBody"]["required"] is True
    body = registration()
    headers = bearer(body["serviceName"])
    assert (await http.post(f"{BASE}/services", json=body, headers=headers)).status_code == 201
    for action in ("heartbeat", "drain"):
        url = f"{BASE}/services/{body['serviceId']}/{action}"
        assert (await http.post(url, headers=headers)).status_code < 300
    missing = await http.post(f"{BASE}/services", headers=headers)
    assert "body is required" in error_of(missing, 400, "LUCID_ERR_1904")["message"]


# -- 3. slow clients --------------------------------------------------------------------------------------


async def _open(port: int, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    return reader, writer


PARTIAL_HEADERS = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


async def test_slow_headers_are_cut_off_and_others_are_served(backend: FakeBackend) -> None:
    limits = HttpLimits(header_timeout=3.0, max_connections=200)
    handle = await start_gateway(backend.target, "127.0.0.1:0", limits=limits)
    slow: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        opened = time.monotonic()
        slow = [await _open(handle.port, PARTIAL_HEADERS) for _ in range(50)]
        async with httpx.AsyncClient(base_url=handle.url, timeout=WAIT) as client:
            assert (await client.get("/healthz")).status_code == 200
            # ... while the 50 are still held (a multi-second margin for a loaded machine).
            assert time.monotonic() - opened < limits.header_timeout
            # Every slow connection is closed by the server (EOF) once its deadline passes.
            for reader, _ in slow:
                assert await asyncio.wait_for(reader.read(), WAIT) == b""
            assert time.monotonic() - opened >= limits.header_timeout - 0.1
            # A kept-alive connection that starts its next request too slowly is cut off too.
            reader, writer = await _open(handle.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await reader.readuntil(b"}")).startswith(b"HTTP/1.1 200")
            writer.write(PARTIAL_HEADERS)
            await writer.drain()
            await asyncio.wait_for(reader.read(), WAIT)
            assert reader.at_eof()
            writer.close()
    finally:
        for _, writer in slow:
            writer.close()
        await handle.stop()


async def test_slow_body_is_408_and_the_connection_closed(backend: FakeBackend) -> None:
    handle = await start_gateway(backend.target, "127.0.0.1:0", limits=HttpLimits(body_timeout=0.5))
    try:
        head = (
            f"POST {BASE}/services HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: {FAKE_AUTH['Authorization']}\r\nContent-Length: 100\r\n\r\n"
        )
        started = time.monotonic()
        reader, writer = await _open(handle.port, head.encode() + b'{"servic')
        answer = await asyncio.wait_for(reader.read(), WAIT)  # to EOF: the server closed it
        assert answer.startswith(b"HTTP/1.1 408")
        assert b"LUCID_ERR_1904" in answer and b"connection: close" in answer.lower()
        assert time.monotonic() - started >= 0.4
        writer.close()
        assert not [c for c in backend.script.calls if c.method == "Register"]
    finally:
        await handle.stop()


async def _served_then_slow(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection the gateway has admitted (it answered a request on it), now sending its
    next request's headers too slowly."""
    reader, writer = await _open(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await asyncio.wait_for(reader.readuntil(b"}"), WAIT)).startswith(b"HTTP/1.1 200")
    writer.write(PARTIAL_HEADERS)
    await writer.drain()
    return reader, writer


async def test_the_connection_cap_is_exact_and_refuses_at_once(backend: FakeBackend) -> None:
    # A header timeout far beyond every wait here: nothing below is closed by it.
    limits = HttpLimits(header_timeout=60.0, max_connections=3)
    handle = await start_gateway(backend.target, "127.0.0.1:0", limits=limits)
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        # N means N: each of the N connections is served (uvicorn's own limit served N - 1).
        held = [await _served_then_slow(handle.port) for _ in range(limits.max_connections)]
        # Over the cap: 503 and closed at once, unread, instead of held for the header timeout.
        for _ in range(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", handle.port)
            try:
                answer = await asyncio.wait_for(reader.read(), WAIT)  # to EOF
            finally:
                writer.close()
            assert answer.startswith(b"HTTP/1.1 503") and answer.endswith(b"Service Unavailable")
        # The held connections were kept: each completes its request.
        reader, writer = held.pop()
        writer.write(b"x\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), WAIT)  # EOF: the gateway closed it
        assert answer.startswith(b"HTTP/1.1 200")
        # The slot it held is free again: a new client is served.
        async with httpx.AsyncClient(base_url=handle.url, timeout=WAIT) as client:
            assert (await client.get("/healthz")).status_code == 200
        for reader, writer in held:
            writer.write(b"x\r\n\r\n")
            assert (await asyncio.wait_for(reader.readuntil(b"}"), WAIT)).startswith(
                b"HTTP/1.1 200"
            )
    finally:
        for _, writer in held:
            writer.close()
        await handle.stop()


@pytest.mark.parametrize(
    "name", ["header_timeout", "body_timeout", "write_timeout", "keep_alive_timeout"]
)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 0.0, -1.0])
def test_http_timeouts_must_be_positive_and_finite(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=name):
        HttpLimits(**{name: value})


async def test_a_watch_client_that_stops_reading_is_cut_off() -> None:
    """A client opens a Watch and never reads while events pile up: after the write timeout
    the gateway closes its connection and the control plane's watch ends with it."""
    live = await start_stack(without_rate_limits(), limits=HttpLimits(write_timeout=1.0))
    index = live.plane.system(DiscoverySystem).index
    internal = index.watchers  # the control plane's own subscribers (the event feed)
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        body = registration()
        headers = {**bearer(body["serviceName"]), **JSON_HEADERS}
        async with httpx.AsyncClient(base_url=live.gateway.url, timeout=WAIT) as http:
            assert (await http.post(f"{BASE}/services", json=body, headers=headers)).is_success
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills sooner
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", live.gateway.port))
            request = (
                f"GET {BASE}/watch?serviceName={body['serviceName']} HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: {headers['Authorization']}\r\n\r\n"
            )
            await loop.sock_sendall(sock, request.encode())
            head = await asyncio.wait_for(loop.sock_recv(sock, 200), WAIT)
            assert head.startswith(b"HTTP/1.1 200")
            assert index.watchers == internal + 1
            # From here on the client reads nothing. Each update is an event of ~8 KiB.
            details = {"blob": "x" * 7000}
            url = f"{BASE}/services/{body['serviceId']}/health"
            deadline = time.monotonic() + 60.0
            updates = 0
            while index.watchers > internal:
                assert time.monotonic() < deadline, f"watch still open after {updates} updates"
                update = {"status": "healthy", "details": {**details, "n": updates}}
                assert (await http.put(url, json=update, headers=headers)).is_success
                updates += 1
        # The gateway closed the connection (what it had sent is still readable, then EOF).
        async with asyncio.timeout(WAIT):
            while await loop.sock_recv(sock, 65536):
                pass
    except ConnectionResetError:
        pass
    finally:
        sock.close()
        await live.stop()


def test_logged_request_text_is_capped() -> None:
    from gateway.app import clip

    long = "x" * 200_000 + "TAIL"
    clipped = clip(long, MAX_LOGGED_CHARS)
    assert len(clipped) < MAX_LOGGED_CHARS + 64 and clipped.endswith("TAIL")
    assert clip("short", MAX_LOGGED_CHARS) == "short"
