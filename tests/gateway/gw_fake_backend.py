"""A scripted gRPC backend (a real grpc.aio server on 127.0.0.1:0) for gateway tests.

It is a test double of the control plane, not of the gateway: it records what arrived and
answers with canned replies or canned google.rpc.Status errors, so routing, transcoding and
error mapping can be tested without the real discovery core.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from gw_dynamic_proto import SERVICE as ECHO_SERVICE
from gw_dynamic_proto import message_class

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.api.lucid.discovery.v1 import discovery_pb2_grpc
from lucid_cp.discovery.errors import STATUS_ROWS, InvalidServiceConfiguration
from lucid_cp.rpc.malformed import MALFORMED_HEADER, error_from_marker
from lucid_cp.rpc.status import StatusTable

# The fake verifies no token; the gateway only requires that one is sent.
FAKE_AUTH = {"Authorization": "Bearer fake.backend.token"}
REGISTERED_AT = 1736536080  # 2025-01-10T19:08:00Z, the seed's example


def packed(message: Any) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(message)
    return out


def status(
    code: int,
    message: str,
    reason: str | None = None,
    *,
    metadata: dict[str, str] | None = None,
    violations: list[tuple[str, str]] | None = None,
    retry_seconds: float | None = None,
) -> grpc.Status:
    details: list[any_pb2.Any] = []
    if reason is not None:
        info = error_details_pb2.ErrorInfo(reason=reason, domain="lucid", metadata=metadata or {})
        details.append(packed(info))
    if violations:
        bad = error_details_pb2.BadRequest()
        for path, text in violations:
            bad.field_violations.add(field=path, description=text)
        details.append(packed(bad))
    if retry_seconds is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(retry_seconds * 1e9))
        details.append(packed(error_details_pb2.RetryInfo(retry_delay=delay)))
    return rpc_status.to_status(status_pb2.Status(code=code, message=message, details=details))


@dataclass(frozen=True)
class PlainStatus(grpc.Status):
    """A failure with no grpc-status-details-bin trailer (a backend that sends no ErrorInfo)."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str], ...] = ()


def plain_status(code: grpc.StatusCode, message: str) -> grpc.Status:
    return PlainStatus(code, message)


@dataclass
class Seen:
    """One call as the backend received it."""

    method: str
    request: Any
    metadata: dict[str, str]


@dataclass
class Script:
    """What the fake backend does; tests mutate it."""

    calls: list[Seen] = field(default_factory=list)
    # Watch: messages to stream (None = end); set when the server sees the call cancelled.
    watch_queue: asyncio.Queue[pb.WatchResponse | grpc.Status | None] = field(
        default_factory=asyncio.Queue
    )
    watch_cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    watch_started: asyncio.Event = field(default_factory=asyncio.Event)
    errors: dict[str, grpc.Status] = field(default_factory=dict)  # method name -> error
    crash: set[str] = field(default_factory=set)  # method names that raise RuntimeError
    hang: set[str] = field(default_factory=set)  # method names that never answer

    def last(self, method: str) -> Seen:
        for seen in reversed(self.calls):
            if seen.method == method:
                return seen
        raise AssertionError(
            f"backend never received {method}; got {[c.method for c in self.calls]}"
        )


_STATUSES = StatusTable([STATUS_ROWS])


async def refuse_marked(md: dict[str, str], context: grpc.aio.ServicerContext) -> None:
    """What the control plane's interceptor does with the gateway's malformed-request marker
    (after authentication, which the fake skips): the servicer never sees the call."""
    marker = md.get(MALFORMED_HEADER)
    if marker is not None:
        error = error_from_marker(marker, InvalidServiceConfiguration)
        status = _STATUSES.to_rpc_status(error, md.get("x-request-id", ""))
        await context.abort_with_status(rpc_status.to_status(status))


class FakeDiscovery(discovery_pb2_grpc.DiscoveryServiceServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    async def _enter(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> None:
        md = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        await refuse_marked(md, context)
        self.script.calls.append(Seen(method, request, md))
        if method in self.script.crash:
            raise RuntimeError("scripted crash")
        if method in self.script.hang:
            await asyncio.Event().wait()  # until the client's deadline cancels the call
        error = self.script.errors.get(method)
        if error is not None:
            await context.abort_with_status(error)

    async def Register(self, request: pb.RegisterRequest, context: Any) -> pb.RegisterResponse:
        await self._enter("Register", request, context)
        reg = request.registration
        reply = pb.RegisterResponse(
            service_id=reg.service_id,
            service_name=reg.service_name,
            cluster=reg.cluster,
            plane=reg.plane,
            endpoint=reg.endpoint,
            version=reg.version,
            status=pb.REGISTRATION_STATUS_REGISTERED,
            ttl=reg.ttl or 300,
            revision=7,
        )
        reply.registered_at.FromSeconds(REGISTERED_AT)
        return reply

    async def Deregister(
        self, request: pb.DeregisterRequest, context: Any
    ) -> pb.DeregisterResponse:
        await self._enter("Deregister", request, context)
        return pb.DeregisterResponse(revision=8)

    async def UpdateHealth(
        self, request: pb.UpdateHealthRequest, context: Any
    ) -> pb.UpdateHealthResponse:
        await self._enter("UpdateHealth", request, context)
        health_status = pb.HealthStatus(status=request.update.status, consecutive_successes=1)
        health_status.timestamp.FromSeconds(REGISTERED_AT)
        return pb.UpdateHealthResponse(health=health_status, revision=9)

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: Any) -> pb.HeartbeatResponse:
        await self._enter("Heartbeat", request, context)
        return pb.HeartbeatResponse(ttl=300, revision=2**40)

    async def Discover(self, request: pb.DiscoverRequest, context: Any) -> pb.DiscoverResponse:
        await self._enter("Discover", request, context)
        return pb.DiscoverResponse(total=0, limit=request.limit or 100, offset=request.offset)

    async def Resolve(self, request: pb.ResolveRequest, context: Any) -> pb.ResolveResponse:
        await self._enter("Resolve", request, context)
        return pb.ResolveResponse(
            host="api-gateway.lucid.onion",
            port=8080,
            protocol=pb.PROTOCOL_HTTPS,
            service_name=request.service_name,
            status=pb.HEALTH_STATE_HEALTHY,
        )

    async def Watch(
        self, request: pb.WatchRequest, context: Any
    ) -> AsyncIterator[pb.WatchResponse]:
        await self._enter("Watch", request, context)
        self.script.watch_started.set()
        try:
            while True:
                item = await self.script.watch_queue.get()
                if item is None:
                    return
                if isinstance(item, grpc.Status):
                    await context.abort_with_status(item)
                yield item
        except asyncio.CancelledError:
            self.script.watch_cancelled.set()
            raise


def echo_handler(script: Script) -> grpc.GenericRpcHandler:
    """The test-only EchoService: answers with the request's fields."""
    request_cls, response_cls = message_class("EchoRequest"), message_class("EchoResponse")

    async def echo(request: Any, context: grpc.aio.ServicerContext) -> Any:
        md = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        await refuse_marked(md, context)
        script.calls.append(Seen("Echo", request, md))
        return response_cls(
            name=request.name, kitchen=request.kitchen, count=request.count, tags=request.tags
        )

    handler = grpc.unary_unary_rpc_method_handler(
        echo,
        request_deserializer=request_cls.FromString,
        response_serializer=response_cls.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(
        ECHO_SERVICE, {"Echo": handler, "EchoKitchen": handler}
    )


@dataclass
class FakeBackend:
    server: grpc.aio.Server
    port: int
    script: Script
    health: health.aio.HealthServicer

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        await self.server.stop(0)


async def start_fake_backend() -> FakeBackend:
    script = Script()
    server = grpc.aio.server()
    # Methods the fake does not script answer UNIMPLEMENTED (the generated base class).
    servicer = FakeDiscovery(script)  # type: ignore[abstract]
    discovery_pb2_grpc.add_DiscoveryServiceServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers([echo_handler(script)])
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return FakeBackend(server, port, script, health_servicer)
