"""One server interceptor doing, for every Lucid RPC, in order: request id, decoding,
authentication, admin check, rate limiting, validation (with defaults), the call itself, error
mapping (through server.status) and metrics. Health and reflection pass through untouched.

Policies come from the descriptors: (lucid.common.v1.http_options) says the rate-limit bucket and
whether the method is admin-only; (lucid.common.v1.rules) says what a valid request is.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2

from lucid_cp.api.lucid.common.v1 import options_pb2
from lucid_cp.auth.ratelimit import RateLimiter
from lucid_cp.auth.tokens import TokenVerifier
from lucid_cp.errors import InvalidArgument, MalformedRequest
from lucid_cp.server import status as status_table
from lucid_cp.server.context import CallContext, set_call
from lucid_cp.server.metrics import Metrics
from lucid_cp.validation import normalize

log = logging.getLogger("lucid_cp.rpc")

REQUEST_ID_HEADER = "x-request-id"
_READ_HEADERS = frozenset({"authorization", REQUEST_ID_HEADER})
_CODES = {c.value[0]: c for c in grpc.StatusCode}
_CODE_NAMES = {number: c.name for number, c in _CODES.items()}


@dataclass(frozen=True, slots=True)
class MethodPolicy:
    full_method: str  # "/lucid.discovery.v1.DiscoveryService/Register"
    bucket: str
    admin_only: bool
    validation_reason: int


def policies_from(files: Iterable[FileDescriptor]) -> dict[str, MethodPolicy]:
    table: dict[str, MethodPolicy] = {}
    for file in files:
        reason = status_table.VALIDATION_REASON_BY_PACKAGE.get(
            file.package, status_table.R.MALFORMED_REQUEST
        )
        for service in file.services_by_name.values():
            for method in service.methods:
                opts = method.GetOptions().Extensions[options_pb2.http_options]
                full = f"/{service.full_name}/{method.name}"
                table[full] = MethodPolicy(full, opts.rate_limit_bucket, opts.admin_only, reason)
    return table


class _Status(grpc.Status):
    def __init__(self, status: status_pb2.Status, request_id: str) -> None:
        self.code = _CODES[status.code]
        self.details = status.message
        self.trailing_metadata = (
            ("grpc-status-details-bin", status.SerializeToString()),
            (REQUEST_ID_HEADER, request_id),
        )


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """The two headers the interceptor reads (authorization, x-request-id)."""
    out: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if key in _READ_HEADERS and isinstance(value, str):
            out[key] = value
    return out


def _request_id(md: dict[str, str]) -> str:
    given = md.get(REQUEST_ID_HEADER, "")
    try:
        return str(uuid.UUID(given)) if given else str(uuid.uuid4())
    except ValueError:
        return str(uuid.uuid4())


class LucidInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        policies: dict[str, MethodPolicy],
        verifier: TokenVerifier,
        limiter: RateLimiter | None,
        metrics: Metrics,
    ) -> None:
        self._policies = policies
        self._verifier = verifier
        self._limiter = limiter
        self._metrics = metrics
        # Wrapped handlers, built once per method (grpc hands back the same handler each call).
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        # Metric children for the common case, resolved once instead of labels() per call.
        self._ok = {m: metrics.requests.labels(m, "OK") for m in policies}
        self._latency = {m: metrics.latency.labels(m) for m in policies}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        policy = self._policies.get(handler_call_details.method)
        if handler is None or policy is None:
            return handler
        cached = self._wrapped.get(policy.full_method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(policy, handler)
        self._wrapped[policy.full_method] = (handler, wrapped)
        return wrapped

    def _wrap(self, policy: MethodPolicy, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(policy, handler),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(policy, handler),
                response_serializer=handler.response_serializer,
            )
        return handler

    def _prepare(
        self,
        policy: MethodPolicy,
        handler: grpc.RpcMethodHandler,
        raw: bytes,
        md: dict[str, str],
        request_id: str,
    ) -> Message:
        try:
            request: Message = handler.request_deserializer(raw)
        except (DecodeError, ValueError, TypeError) as exc:
            raise MalformedRequest(f"request is not a valid protobuf message: {exc}") from None
        principal = self._verifier.verify(md.get("authorization"))
        if policy.admin_only:
            principal.require_admin()
        if self._limiter is not None and policy.bucket:
            self._limiter.acquire(policy.bucket, principal.subject)
        violations = normalize(request)
        if violations:
            raise InvalidArgument(
                "; ".join(f"{v.field}: {v.description}" for v in violations),
                violations,
                reason=policy.validation_reason,
            )
        set_call(CallContext(principal, request_id))
        return request

    async def _fail(
        self,
        context: grpc.aio.ServicerContext,
        exc: Exception,
        policy: MethodPolicy,
        request_id: str,
        started: float | None,
    ) -> None:
        """Maps ``exc`` through the error table, records it (unless started is None) and aborts."""
        if not status_table.is_known(exc):
            log.error(
                "unhandled error in %s",
                policy.full_method,
                exc_info=exc,
                extra={"request_id": request_id},
            )
        status = status_table.to_rpc_status(exc, request_id)
        if started is not None:
            self._record(policy, _CODE_NAMES[status.code], started, request_id)
        await context.abort_with_status(_Status(status, request_id))

    def _record(self, policy: MethodPolicy, code: str, started: float, request_id: str) -> None:
        method = policy.full_method
        seconds = time.perf_counter() - started
        if code == "OK":
            self._ok[method].inc()
        else:
            self._metrics.requests.labels(method, code).inc()
        self._latency[method].observe(seconds)
        if log.isEnabledFor(logging.DEBUG):  # one access-log line per call at --log-level DEBUG
            log.debug(
                "rpc",
                extra={
                    "method": method,
                    "code": code,
                    "ms": round(seconds * 1e3, 3),
                    "request_id": request_id,
                },
            )

    def _wrap_unary(
        self, policy: MethodPolicy, handler: grpc.RpcMethodHandler
    ) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Any]]:
        inner = handler.unary_unary

        async def call(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            md = _metadata(context)
            request_id = _request_id(md)
            failure: Exception | None = None
            try:
                request = self._prepare(policy, handler, raw, md, request_id)
                response = await inner(request, context)
            except Exception as exc:
                failure = exc
            if failure is None:
                self._record(policy, "OK", started, request_id)
                context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
                return response
            await self._fail(context, failure, policy, request_id, started)

        return call

    def _wrap_stream(
        self, policy: MethodPolicy, handler: grpc.RpcMethodHandler
    ) -> Callable[[bytes, grpc.aio.ServicerContext], AsyncIterator[Any]]:
        inner = handler.unary_stream

        async def call(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started = time.perf_counter()
            md = _metadata(context)
            request_id = _request_id(md)
            failure: Exception | None = None
            recorded = False
            try:
                request = self._prepare(policy, handler, raw, md, request_id)
                await context.send_initial_metadata(((REQUEST_ID_HEADER, request_id),))
                responses = inner(request, context)
                try:
                    async for item in responses:
                        if not recorded:
                            self._record(policy, "OK", started, request_id)
                            recorded = True
                        yield item
                finally:
                    # Streams release what they hold (e.g. a watch subscription) however they end.
                    close = getattr(responses, "aclose", None)
                    if close is not None:
                        await close()
            except Exception as exc:
                failure = exc
            if failure is not None:
                await self._fail(
                    context, failure, policy, request_id, None if recorded else started
                )

        return call
