"""``PolicyInterceptor``: enforces every method's declared policy, for all four call arities.

For each call, in order: request id, authentication (JWT), admin check, rate limit, then for
every request message: decoding and validation (with defaults); then the call itself, error
mapping (through the one status table) and metrics. The servicer receives a ``Call`` (principal
and request id) in place of the transport context.

Fail closed: a method that declares no ``(lucid.common.v1.policy)`` is refused with
PERMISSION_DENIED / LUCID_ERR_1912; only the services in ``policy.PUBLIC_SERVICES`` (health,
reflection) pass untouched.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2

from lucid_cp.auth.ratelimit import RateLimiter
from lucid_cp.auth.tokens import TokenVerifier
from lucid_cp.call import Call
from lucid_cp.errors import LucidError, MalformedRequest, MethodNotAllowed, Unauthenticated
from lucid_cp.rpc.malformed import MALFORMED_HEADER, error_from_marker
from lucid_cp.rpc.metrics import RpcMetrics
from lucid_cp.rpc.policy import PUBLIC_SERVICES, MethodPolicy
from lucid_cp.rpc.status import StatusTable
from lucid_cp.validation import normalize

log = logging.getLogger("lucid_cp.rpc")

REQUEST_ID_HEADER = "x-request-id"
# The largest `authorization` value accepted (bytes); larger ones are refused as UNAUTHENTICATED
# before any token work. The server's metadata limit (app.py, MAX_METADATA_BYTES) is above it,
# so an oversized token reaches this check instead of grpc's own RESOURCE_EXHAUSTED.
MAX_TOKEN_BYTES = 8192
# How long a response stream may take to produce its first message before its initial metadata
# is sent anyway (see _relay).
FIRST_MESSAGE_GRACE = 0.05
_NOTHING = object()  # a stream that ended without a message


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


_READ_HEADERS = frozenset({"authorization", REQUEST_ID_HEADER, MALFORMED_HEADER})
_CODES = {c.value[0]: c for c in grpc.StatusCode}
_CODE_NAMES = {number: c.name for number, c in _CODES.items()}

if TYPE_CHECKING:  # generic in the type hints only; the runtime classes are not
    Handler = grpc.RpcMethodHandler[Any, Any]
    Context = grpc.aio.ServicerContext[Any, Any]


class _Status(grpc.Status):
    def __init__(self, status: status_pb2.Status, request_id: str) -> None:
        self.code = _CODES[status.code]
        self.details = status.message
        self.trailing_metadata = (
            ("grpc-status-details-bin", status.SerializeToString()),
            (REQUEST_ID_HEADER, request_id),
        )


def _metadata(context: Context) -> dict[str, str]:
    """The headers the interceptor reads (authorization, x-request-id, the gateway's marker)."""
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


def _service_of(full_method: str) -> str:
    return full_method.lstrip("/").partition("/")[0]


class _Attempt:
    """The bookkeeping of one call: when it started, its request id, whether its latency was
    observed (a stream's: at its first message) and whether its final code was counted."""

    __slots__ = ("counted", "md", "method", "request_id", "started", "timed")

    def __init__(self, method: str, context: Context) -> None:
        self.method = method
        self.started = time.perf_counter()
        self.md = _metadata(context)
        self.request_id = _request_id(self.md)
        self.timed = False
        self.counted = False


class PolicyInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        policies: Mapping[str, MethodPolicy],
        verifier: TokenVerifier,
        limiter: RateLimiter | None,
        metrics: RpcMetrics,
        statuses: StatusTable,
    ) -> None:
        self._policies = policies
        self._verifier = verifier
        self._limiter = limiter
        self._metrics = metrics
        self._statuses = statuses
        # Wrapped handlers, built once per method (grpc hands back the same handler each call).
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}
        # Metric children for the common case, resolved once instead of labels() per call.
        self._ok = {m: metrics.requests.labels(m, "OK") for m in policies}
        self._latency = {m: metrics.latency.labels(m) for m in policies}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or _service_of(method) in PUBLIC_SERVICES:
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, self._policies.get(method), handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    # -- the steps every call takes ------------------------------------------------------------

    def _authorize(self, policy: MethodPolicy | None, attempt: _Attempt, context: Context) -> Call:
        if policy is None:
            raise MethodNotAllowed(
                f"{attempt.method} declares no policy and is refused",
                details={"method": attempt.method},
            )
        authorization = attempt.md.get("authorization")
        if authorization is not None and len(authorization.encode()) > MAX_TOKEN_BYTES:
            raise Unauthenticated(f"authorization is too large (at most {MAX_TOKEN_BYTES} bytes)")
        principal = self._verifier.verify(authorization)
        if policy.admin_only:
            principal.require_admin()
        if self._limiter is not None:
            self._limiter.acquire(policy.bucket, principal.subject)
        marker = attempt.md.get(MALFORMED_HEADER)
        if (
            marker is not None
        ):  # the REST gateway could not transcode it: authenticated, now say why
            raise error_from_marker(marker, policy.invalid)

        def on_done(callback: Callable[[], None]) -> None:
            context.add_done_callback(lambda _ctx: callback())  # type: ignore[arg-type]

        return Call(principal, attempt.request_id, on_done)

    @staticmethod
    def _decode(policy: MethodPolicy, handler: Handler, raw: bytes) -> Message:
        try:
            request: Message = handler.request_deserializer(raw)  # type: ignore[misc]
        except (DecodeError, ValueError, TypeError) as exc:
            raise MalformedRequest(f"request is not a valid protobuf message: {exc}") from None
        violations = normalize(request)
        if violations:
            raise policy.invalid(
                "; ".join(f"{v.field}: {v.description}" for v in violations), violations
            )
        return request

    async def _decode_stream(
        self, policy: MethodPolicy, handler: Handler, raws: AsyncIterator[bytes]
    ) -> AsyncIterator[Message]:
        async for raw in raws:
            yield self._decode(policy, handler, raw)

    async def _charged(
        self, requests: AsyncIterator[Message], bucket: str, subject: str
    ) -> AsyncIterator[Message]:
        """A client stream whose every message takes a token: one over the limit ends the
        request stream with RateLimited (the servicer says what that means for the call)."""
        assert self._limiter is not None
        async for message in requests:
            self._limiter.acquire(bucket, subject)
            yield message

    def _observe(self, attempt: _Attempt) -> None:
        """Latency: of the whole call (unary responses), or until the first message (streams)."""
        if attempt.timed:
            return
        attempt.timed = True
        method = attempt.method
        latency = self._latency.get(method) or self._metrics.latency.labels(method)
        latency.observe(time.perf_counter() - attempt.started)

    def _finish(self, attempt: _Attempt, code: str) -> None:
        """Counts the call's final code, once, however it ended."""
        if attempt.counted:
            return
        attempt.counted = True
        self._observe(attempt)
        method = attempt.method
        ok = self._ok.get(method) if code == "OK" else None
        (ok or self._metrics.requests.labels(method, code)).inc()
        if log.isEnabledFor(logging.DEBUG):  # one access-log line per call at --log-level DEBUG
            log.debug(
                "rpc",
                extra={
                    "method": method,
                    "code": code,
                    "ms": round((time.perf_counter() - attempt.started) * 1e3, 3),
                    "request_id": attempt.request_id,
                },
            )

    async def _fail(self, context: Context, exc: Exception, attempt: _Attempt) -> None:
        """Maps ``exc`` through the status table, counts it and aborts the call."""
        if not self._statuses.is_known(exc):
            log.error(
                "unhandled error in %s",
                attempt.method,
                exc_info=exc,
                extra={"request_id": attempt.request_id},
            )
        elif not isinstance(exc, LucidError):  # a store error: its text stays in the log
            log.warning(
                "%s failed: %s", attempt.method, exc, extra={"request_id": attempt.request_id}
            )
        status = self._statuses.to_rpc_status(exc, attempt.request_id)
        self._finish(attempt, _CODE_NAMES[status.code])
        await context.abort_with_status(_Status(status, attempt.request_id))

    # -- one wrapper per arity -------------------------------------------------------------------
    # The request side differs by arity (one message, or a stream decoded message by message);
    # the response side is shared: _respond for one response, _relay for a stream of them.

    def _wrap(self, method: str, policy: MethodPolicy | None, handler: Handler) -> Handler:
        serializer = handler.response_serializer
        inner: Any
        if handler.unary_unary is not None or handler.unary_stream is not None:

            def one(raw: bytes) -> Callable[[MethodPolicy], Message]:
                return lambda checked: self._decode(checked, handler, raw)

            request_of: Any = one
        else:

            def many(
                raws: AsyncIterator[bytes],
            ) -> Callable[[MethodPolicy], AsyncIterator[Message]]:
                return lambda checked: self._decode_stream(checked, handler, raws)

            request_of = many

        if handler.unary_unary is not None or handler.stream_unary is not None:
            inner = handler.unary_unary or handler.stream_unary

            async def respond(request: Any, context: Context) -> Any:
                return await self._respond(
                    _Attempt(method, context), context, policy, inner, request_of(request)
                )

            factory = (
                grpc.unary_unary_rpc_method_handler
                if handler.unary_unary is not None
                else grpc.stream_unary_rpc_method_handler
            )
            return factory(respond, response_serializer=serializer)

        inner = handler.unary_stream or handler.stream_stream

        async def relay(request: Any, context: Context) -> AsyncIterator[Any]:
            attempt = _Attempt(method, context)
            async for item in self._relay(attempt, context, policy, inner, request_of(request)):
                yield item

        factory = (
            grpc.unary_stream_rpc_method_handler
            if handler.unary_stream is not None
            else grpc.stream_stream_rpc_method_handler
        )
        return factory(relay, response_serializer=serializer)

    async def _respond(
        self,
        attempt: _Attempt,
        context: Context,
        policy: MethodPolicy | None,
        inner: Any,
        request: Callable[[MethodPolicy], Any],
    ) -> Any:
        """One response: authorize, decode, call, map a failure, record."""
        try:
            call = self._authorize(policy, attempt, context)
            assert policy is not None  # _authorize refuses a method without one
            message = request(policy)
            if policy.items and self._limiter is not None:
                # A batch: a token per item; the call took the first.
                extra = len(getattr(message, policy.items)) - 1
                if extra > 0:
                    self._limiter.acquire(policy.bucket, call.principal.subject, extra)
            response = await inner(message, call)
        except Exception as exc:  # every error goes through the one table
            await self._fail(context, exc, attempt)
            return None
        except asyncio.CancelledError:  # the client went away or its deadline passed
            self._finish(attempt, "CANCELLED")
            raise
        # (grpc.aio ends a request stream that the client cancelled like a half-close: such a
        # call is counted by what its handler did.)
        self._finish(attempt, "OK")
        context.set_trailing_metadata(((REQUEST_ID_HEADER, attempt.request_id),))
        return response

    async def _relay(
        self,
        attempt: _Attempt,
        context: Context,
        policy: MethodPolicy | None,
        inner: Any,
        request: Callable[[MethodPolicy], Any],
    ) -> AsyncIterator[Any]:
        """A stream of responses: authorize, send the request id in the initial metadata, relay
        the servicer's messages, map a failure.

        The initial metadata goes out with the first message, or after FIRST_MESSAGE_GRACE
        seconds when the stream has nothing to send yet: a stream that fails at once (not
        found, not allowed, a bad cursor) is then a trailers-only answer, which the REST
        gateway turns into a real HTTP error status instead of a 200 with an error line."""
        metadata = ((REQUEST_ID_HEADER, attempt.request_id),)
        first: asyncio.Future[Any] | None = None
        try:
            call = self._authorize(policy, attempt, context)
            assert policy is not None  # _authorize refuses a method without one
            incoming = request(policy)
            if policy.each_request and self._limiter is not None:
                incoming = self._charged(incoming, policy.bucket, call.principal.subject)
            stream = inner(incoming, call).__aiter__()
            first = asyncio.ensure_future(stream.__anext__())
            done, _ = await asyncio.wait({first}, timeout=FIRST_MESSAGE_GRACE)
            if not done:  # a stream that waits for something to send: headers now
                await context.send_initial_metadata(metadata)
            try:
                item = await first
            except StopAsyncIteration:
                item = _NOTHING
            if done:
                await context.send_initial_metadata(metadata)
            if item is not _NOTHING:
                self._observe(attempt)
                yield item
                async for item in stream:
                    self._observe(attempt)
                    yield item
        except Exception as exc:  # every error goes through the one table
            await self._fail(context, exc, attempt)
            return
        except (asyncio.CancelledError, GeneratorExit):  # the client went away
            self._finish(attempt, "CANCELLED")
            raise
        finally:
            if first is not None:
                if not first.done():
                    first.cancel()
                # Its outcome is always retrieved (no "exception never retrieved" when the call
                # was cancelled in the same turn the first message failed).
                first.add_done_callback(_retrieve)
        self._finish(attempt, "OK")
