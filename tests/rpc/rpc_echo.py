"""A test-only service with all four call arities, built from a FileDescriptorProto at test time,
served through the real PolicyInterceptor on 127.0.0.1:0. Methods with a policy echo the
request's name and the caller's subject; two methods declare no policy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.message_factory import GetMessageClass
from prometheus_client import CollectorRegistry

from lucid_cp.api.lucid.common.v1 import options_pb2
from lucid_cp.auth.ratelimit import RateLimiter
from lucid_cp.auth.tokens import Role, TokenVerifier, mint_token
from lucid_cp.call import Call
from lucid_cp.clock import SystemClock
from lucid_cp.config import RateLimit
from lucid_cp.errors import InvalidArgument
from lucid_cp.rpc.interceptor import PolicyInterceptor
from lucid_cp.rpc.metrics import RpcMetrics
from lucid_cp.rpc.policy import policies_from
from lucid_cp.rpc.status import StatusTable

PACKAGE = "lucid.rpctest.v1"
SERVICE = f"{PACKAGE}.EchoService"
SECRET = b"rpc-interceptor-tests-secret-0123456789"
_T = descriptor_pb2.FieldDescriptorProto


class InvalidEcho(InvalidArgument):
    """This test system's own invalid-request error."""


# (method, client streaming, server streaming, policy or None)
METHODS: tuple[tuple[str, bool, bool, options_pb2.MethodPolicy | None], ...] = (
    ("Unary", False, False, options_pb2.MethodPolicy(rate_limit_bucket="echo")),
    ("ServerStream", False, True, options_pb2.MethodPolicy(rate_limit_bucket="echo")),
    ("ClientStream", True, False, options_pb2.MethodPolicy(rate_limit_bucket="echo")),
    ("Bidi", True, True, options_pb2.MethodPolicy(rate_limit_bucket="echo")),
    (
        "AdminOnly",
        False,
        False,
        options_pb2.MethodPolicy(rate_limit_bucket="echo", admin_only=True),
    ),
    ("Boom", False, False, options_pb2.MethodPolicy(rate_limit_bucket="echo")),
    ("Hang", False, False, options_pb2.MethodPolicy(rate_limit_bucket="echo")),
    ("FailAfterOne", False, True, options_pb2.MethodPolicy(rate_limit_bucket="echo")),
    ("NoPolicy", False, False, None),
    ("NoPolicyBidi", True, True, None),
)
ARITIES = ("Unary", "ServerStream", "ClientStream", "Bidi")


@cache
def echo_file() -> FileDescriptor:
    f = descriptor_pb2.FileDescriptorProto(
        name="lucid/rpctest/v1/echo.proto",
        package=PACKAGE,
        syntax="proto3",
        dependency=["lucid/common/v1/options.proto"],
    )
    request = f.message_type.add(name="EchoRequest")
    name = request.field.add(name="name", number=1, type=_T.TYPE_STRING, label=_T.LABEL_OPTIONAL)
    name.options.Extensions[options_pb2.rules].CopyFrom(
        options_pb2.FieldRules(required=True, max_len=8)
    )
    response = f.message_type.add(name="EchoResponse")
    for number, field_name in enumerate(("name", "subject", "request_id"), start=1):
        response.field.add(
            name=field_name, number=number, type=_T.TYPE_STRING, label=_T.LABEL_OPTIONAL
        )
    service = f.service.add(name="EchoService")
    for method_name, client_streaming, server_streaming, policy in METHODS:
        method = service.method.add(
            name=method_name,
            input_type=f".{PACKAGE}.EchoRequest",
            output_type=f".{PACKAGE}.EchoResponse",
            client_streaming=client_streaming,
            server_streaming=server_streaming,
        )
        if policy is not None:
            method.options.Extensions[options_pb2.policy].CopyFrom(policy)
    pool = descriptor_pool.Default()
    pool.Add(f)
    return pool.FindFileByName(f.name)


def message(name: str) -> Any:
    return GetMessageClass(echo_file().message_types_by_name[name])


@dataclass
class EchoServicer:
    """Records what the interceptor handed it; ``done`` counts on_done callbacks run."""

    calls: list[Call] = field(default_factory=list)
    done: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def _reply(self, request: Any, call: Call) -> Any:
        self.calls.append(call)
        return message("EchoResponse")(
            name=request.name, subject=call.principal.subject, request_id=call.request_id
        )

    def _closed(self) -> None:
        self.done += 1
        self.closed.set()

    async def Unary(self, request: Any, call: Call) -> Any:
        return self._reply(request, call)

    AdminOnly = Unary
    NoPolicy = Unary

    async def Boom(self, request: Any, call: Call) -> Any:
        raise RuntimeError("secret internals")

    async def Hang(self, request: Any, call: Call) -> Any:
        self.calls.append(call)
        await asyncio.Event().wait()  # until the client cancels

    async def FailAfterOne(self, request: Any, call: Call) -> AsyncIterator[Any]:
        yield self._reply(request, call)
        raise RuntimeError("broke after the first message")

    async def ServerStream(self, request: Any, call: Call) -> AsyncIterator[Any]:
        call.on_done(self._closed)
        for _ in range(3):
            yield self._reply(request, call)

    async def ClientStream(self, requests: AsyncIterator[Any], call: Call) -> Any:
        names = [r.name async for r in requests]
        return self._reply(message("EchoRequest")(name="+".join(names)[:8]), call)

    async def Bidi(self, requests: AsyncIterator[Any], call: Call) -> AsyncIterator[Any]:
        call.on_done(self._closed)
        async for request in requests:
            yield self._reply(request, call)

    NoPolicyBidi = Bidi


def handlers(servicer: EchoServicer) -> grpc.GenericRpcHandler:
    request_cls, response_cls = message("EchoRequest"), message("EchoResponse")
    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    table = {
        name: kinds[(cs, ss)](
            getattr(servicer, name),
            request_deserializer=request_cls.FromString,
            response_serializer=response_cls.SerializeToString,
        )
        for name, cs, ss, _ in METHODS
    }
    return grpc.method_handlers_generic_handler(SERVICE, table)


@dataclass
class EchoServer:
    server: grpc.aio.Server
    target: str
    servicer: EchoServicer
    metrics: RpcMetrics


async def start_echo_server(capacity: int = 1000) -> EchoServer:
    clock = SystemClock()
    metrics = RpcMetrics(CollectorRegistry())
    interceptor = PolicyInterceptor(
        policies_from([echo_file()], InvalidEcho),
        TokenVerifier(SECRET, clock),
        RateLimiter({"echo": RateLimit(capacity)}, clock),
        metrics,
        StatusTable(),
    )
    server = grpc.aio.server(interceptors=[interceptor])
    servicer = EchoServicer()
    server.add_generic_rpc_handlers((handlers(servicer),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return EchoServer(server, f"127.0.0.1:{port}", servicer, metrics)


def bearer(subject: str = "echo-svc", role: Role = Role.SERVICE) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {mint_token(SECRET, subject, role, SystemClock())}"),)
