"""The ASGI app: one catch-all handler that matches the route table and forwards to gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from importlib import metadata
from typing import Any, cast

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.backend import Backend
from gateway.errors import ApiError, from_grpc, gateway_error, internal_error, unauthenticated
from gateway.marker import MALFORMED_HEADER, encode_marker
from gateway.openapi import build_openapi
from gateway.routes import MethodNotAllowed, NoRoute, Route, RouteTable, compile_routes
from gateway.services import DEFAULT_PACKAGE, select_services
from gateway.streaming import NdjsonStream
from gateway.transcode import (
    MAX_BODY_BYTES,
    body_too_large,
    build_request,
    check_body_size,
    dumps,
    encode_response,
    encode_response_json,
    field_prefix,
)
from lucid_cp.api.lucid.common.v1 import errors_pb2
from lucid_cp.clock import Clock, SystemClock

log = logging.getLogger("lucid.gateway")

OPENAPI_PATH = "/api/v1/openapi.json"
HEALTHZ_PATH = "/healthz"
READYZ_PATH = "/readyz"
REQUEST_ID_HEADER = "X-Request-ID"
# Dependencies the control plane reports through grpc.health.v1, by the name /readyz gives them
# (the control plane's lucid_cp/readiness.py sets "lucid.store").
READINESS_DEPENDENCIES = {"store": "lucid.store"}
CONTROL_PLANE = "control-plane"
JSON_TYPE = "application/json"
# The longest Authorization header forwarded: a longer one is answered 401 at once (a Lucid
# token is a few hundred bytes; gRPC would refuse a long one with a misleading
# RESOURCE_EXHAUSTED). The control plane refuses tokens over the same size.
MAX_AUTHORIZATION_BYTES = 8192
# At most this much of any request (its path, an exception's text) goes into one log line.
MAX_LOGGED_CHARS = 2048
DEFAULT_BODY_TIMEOUT = 30.0

_R = errors_pb2.ErrorReason


def package_version() -> str:
    return metadata.version("lucid-cp")


def create_app(
    grpc_target: str | grpc.aio.Channel,
    *,
    services: Sequence[str | ServiceDescriptor] | None = None,
    package: str = DEFAULT_PACKAGE,
    timeout: float = 30.0,
    readiness_timeout: float = 1.0,
    max_message_bytes: int = 4 * 1024 * 1024,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    version: str | None = None,
    clock: Clock | None = None,
) -> Starlette:
    """The REST gateway as a Starlette app over ONE grpc.aio channel.

    ``grpc_target`` is "host:port" (the app owns the channel, created in its event loop and
    closed at shutdown) or an existing grpc.aio channel (borrowed, never closed).
    ``services`` are full service names or descriptors; None exposes every service in
    ``package``. ``body_timeout`` bounds the reading of a request body (408 after it).
    ``clock`` stamps error timestamps. Raises ServiceNotFound / TemplateError at
    once on bad configuration.
    """
    selected = select_services(services, package)
    table = compile_routes(selected)
    gateway = Gateway(
        table,
        Backend(grpc_target, max_message_bytes=max_message_bytes),
        openapi=build_openapi(table.routes, selected),
        timeout=timeout,
        readiness_timeout=readiness_timeout,
        body_timeout=body_timeout,
        version=version or package_version(),
        clock=clock or SystemClock(),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await gateway.backend.close()

    # No routes: every method and path falls through to the router's default, Gateway.asgi, so
    # even unknown paths and methods are answered in the standard error shape. (A Mount("/")
    # would not do: its pattern does not match a path holding a newline, "%0A", which would then
    # get Starlette's plain-text 404.)
    app = Starlette(lifespan=lifespan)
    app.router.default = gateway.asgi
    app.state.gateway = gateway
    return app


class Gateway:
    def __init__(
        self,
        routes: RouteTable,
        backend: Backend,
        *,
        openapi: dict[str, Any],
        timeout: float,
        readiness_timeout: float,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        version: str,
        clock: Clock,
    ) -> None:
        self.routes = routes
        self.backend = backend
        self.openapi_body = dumps(openapi)
        self.timeout = timeout
        self.readiness_timeout = readiness_timeout
        self.body_timeout = body_timeout
        self.version = version
        self.clock = clock
        self._streams: set[NdjsonStream] = set()
        self._closing = False

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handle(Request(scope, receive))
        await response(scope, receive, send)

    async def handle(self, request: Request) -> Response | NdjsonStream:
        request_id = _request_id(request.headers.get(REQUEST_ID_HEADER))
        try:
            return await self._dispatch(request, request_id)
        except ApiError as error:
            return self.error_response(error, request_id)
        except Exception as exc:
            log.error(
                "unhandled error in the REST gateway (request_id=%s) %s %s: %s",
                request_id,
                request.method,
                clip(request.scope["path"], MAX_LOGGED_CHARS // 8),
                clip("".join(traceback.format_exception(exc)), MAX_LOGGED_CHARS),
            )
            return self.error_response(internal_error(), request_id)

    async def _dispatch(self, request: Request, request_id: str) -> Response | NdjsonStream:
        method, path = request.method, request.scope["path"]
        if method == "GET" and path in (HEALTHZ_PATH, READYZ_PATH, OPENAPI_PATH):
            return await self._local(path, request_id)
        raw_path = request.scope.get("raw_path") or path.encode()
        try:
            match = self.routes.match(method, raw_path.decode("latin-1"))
        except NoRoute:
            raise gateway_error(404, _R.NOT_FOUND, f"no route for {method} {path}") from None
        except MethodNotAllowed as exc:
            error = gateway_error(405, _R.MALFORMED_REQUEST, f"method {method} not allowed")
            response = self.error_response(error, request_id)
            response.headers["Allow"] = ", ".join(exc.allowed)
            return response
        route = match.route
        # Authentication before any feedback on the request itself: only the control plane
        # can verify a token, so the gateway refuses what cannot be one and forwards the rest.
        authorization = _authorization(request.headers.get("authorization"))
        call_metadata = [("x-request-id", request_id), ("authorization", authorization)]
        body = await _read_body(request, self.body_timeout, self.clock) if route.body else b""
        try:
            message = build_request(route, match.path_values, request.scope["query_string"], body)
        except ApiError as error:
            # The control plane authenticates the call, then answers with this error.
            message = route.request_class()
            marker = encode_marker(error.message, error.violations(), invalid=error.invalid)
            call_metadata.append((MALFORMED_HEADER, marker))
        if route.server_streaming:
            return self._stream(route, message, call_metadata, request_id)
        return await self._unary(route, message, call_metadata, request_id)

    async def _unary(
        self,
        route: Route,
        message: Message,
        call_metadata: list[tuple[str, str]],
        request_id: str,
    ) -> Response:
        call = self.backend.unary(route)
        try:
            reply = await call(message, metadata=call_metadata, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise _api_error(route, exc) from None
        headers = {REQUEST_ID_HEADER: request_id}
        if route.success_status == 204:
            return Response(status_code=204, headers=headers)
        return Response(
            encode_response(route, reply),
            status_code=_status_of(route, reply),
            headers=headers,
            media_type=JSON_TYPE,
        )

    def _stream(
        self,
        route: Route,
        message: Message,
        call_metadata: list[tuple[str, str]],
        request_id: str,
    ) -> NdjsonStream:
        call = self.backend.server_stream(route)(message, metadata=call_metadata)

        async def error_answer(error: ApiError, scope: Scope, receive: Receive, send: Send) -> None:
            await self.error_response(error, request_id)(scope, receive, send)

        stream = NdjsonStream(
            call,
            encode=lambda m: dumps(encode_response_json(route, m)) + b"\n",
            error_of=lambda exc: _api_error(route, exc),
            error_line=lambda error: dumps(self._error_body(error, request_id)) + b"\n",
            error_answer=error_answer,
            headers={REQUEST_ID_HEADER: request_id, "Cache-Control": "no-cache"},
        )
        self._streams.add(stream)
        call.add_done_callback(lambda _: self._streams.discard(stream))
        if self._closing:
            stream.abort()
        return stream

    def abort_streams(self) -> None:
        """Ends every open stream (called when the HTTP server starts shutting down)."""
        self._closing = True
        for stream in list(self._streams):
            stream.abort()

    async def _local(self, path: str, request_id: str) -> Response:
        headers = {REQUEST_ID_HEADER: request_id}
        if path == OPENAPI_PATH:
            return Response(self.openapi_body, headers=headers, media_type=JSON_TYPE)
        if path == HEALTHZ_PATH:
            return Response(dumps({"status": "ok"}), headers=headers, media_type=JSON_TYPE)
        down = await self._down()
        if not down:
            return Response(dumps({"status": "ready"}), headers=headers, media_type=JSON_TYPE)
        return Response(
            dumps({"status": "unavailable", "down": down}),
            status_code=503,
            headers=headers,
            media_type=JSON_TYPE,
        )

    async def _down(self) -> list[str]:
        """What is down, by grpc.health.v1: the control plane if it does not answer or is not
        SERVING for a reason it does not name; each dependency it reports NOT_SERVING. A
        dependency the backend does not report (NOT_FOUND) is not counted."""
        stub = health_pb2_grpc.HealthStub(self.backend.channel)
        serving = health_pb2.HealthCheckResponse.SERVING

        async def status(service: str) -> int | None:
            request = health_pb2.HealthCheckRequest(service=service)
            try:
                reply = await stub.Check(request, timeout=self.readiness_timeout)
            except grpc.aio.AioRpcError as exc:
                if service and exc.code() is grpc.StatusCode.NOT_FOUND:
                    return serving
                return None
            return int(reply.status)

        names = list(READINESS_DEPENDENCIES)
        overall, *dependencies = await asyncio.gather(
            status(""), *(status(READINESS_DEPENDENCIES[n]) for n in names)
        )
        if overall is None:
            return [CONTROL_PLANE]
        down = [n for n, s in zip(names, dependencies, strict=True) if s != serving]
        if overall != serving and not down:
            down.append(CONTROL_PLANE)
        return down

    def _error_body(self, error: ApiError, request_id: str) -> dict[str, object]:
        return error.body(request_id, datetime.fromtimestamp(self.clock.now(), UTC), self.version)

    def error_response(self, error: ApiError, request_id: str) -> Response:
        return Response(
            dumps(self._error_body(error, request_id)),
            status_code=error.status,
            headers={REQUEST_ID_HEADER: request_id, **error.headers()},
            media_type=JSON_TYPE,
        )


def _api_error(route: Route, exc: grpc.aio.AioRpcError) -> ApiError:
    return from_grpc(
        exc.code(),
        exc.details(),
        cast(Sequence[tuple[str, str | bytes]] | None, exc.trailing_metadata()),
        strip_field_prefix=field_prefix(route),
    )


def _status_of(route: Route, reply: Message) -> int:
    """The HTTP status of a successful call: ``unhealthy_status`` when the method reports
    health and the reply says unhealthy, else the success status."""
    if route.healthy_field is not None and not getattr(reply, route.healthy_field.name):
        return route.unhealthy_status
    return route.success_status


def _request_id(header: str | None) -> str:
    if header:
        try:
            return str(uuid.UUID(header))
        except ValueError:
            pass
    return str(uuid.uuid4())


def clip(text: str, limit: int) -> str:
    """``text`` with its middle elided to at most about ``limit`` characters."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}...[{len(text) - 2 * half} characters elided]...{text[-half:]}"


def _authorization(header: str | None) -> str:
    """The Authorization header to forward, or ApiError 401 for one that cannot be a token."""
    if header is None:
        raise unauthenticated("missing bearer token (Authorization header)")
    if len(header) > MAX_AUTHORIZATION_BYTES:
        raise unauthenticated(f"invalid token: longer than {MAX_AUTHORIZATION_BYTES} bytes")
    if not (header.isascii() and header.isprintable()):
        raise unauthenticated("invalid token: the Authorization header must be printable ASCII")
    return header


async def _read_body(request: Request, timeout: float, clock: Clock) -> bytes:
    check_body_size(request.headers.get("content-length"))
    chunks: list[bytes] = []
    size = 0
    try:
        async with clock.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise body_too_large()
                chunks.append(chunk)
    except ClientDisconnect:
        raise gateway_error(400, _R.MALFORMED_REQUEST, "client disconnected mid-body") from None
    except TimeoutError:
        message = f"request body not received within {timeout:g} s"
        raise gateway_error(408, _R.MALFORMED_REQUEST, message) from None
    return b"".join(chunks)
