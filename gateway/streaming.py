"""Server-streaming RPCs as newline-delimited JSON (application/x-ndjson).

One message per line, written as it arrives. If the call fails before anything was streamed
(e.g. UNAUTHENTICATED), the answer is an ordinary HTTP error; a failure mid-stream becomes one
final line ``{"error": {...}}``. When the HTTP client disconnects, the gRPC call is cancelled;
a client that stops reading is disconnected by the HTTP server once its write timeout passes
(``gateway.limits``).
When the gateway shuts down, open streams end with an UNAVAILABLE error line.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, cast

import grpc
from google.protobuf.message import Message
from starlette.types import Receive, Scope, Send

from gateway.errors import ApiError, gateway_error
from lucid_cp.api.lucid.common.v1 import errors_pb2

NDJSON = "application/x-ndjson"

ErrorOf = Callable[[grpc.aio.AioRpcError], ApiError]
ErrorAnswer = Callable[[ApiError, Scope, Receive, Send], Awaitable[None]]


class NdjsonStream:
    """An ASGI response streaming one grpc.aio unary-stream call."""

    def __init__(
        self,
        call: grpc.aio.UnaryStreamCall[Any, Any],
        *,
        encode: Callable[[Message], bytes],
        error_of: ErrorOf,
        error_line: Callable[[ApiError], bytes],
        error_answer: ErrorAnswer,
        headers: dict[str, str],
    ) -> None:
        self._call = call
        self._encode = encode
        self._error_of = error_of
        self._error_line = error_line
        self._error_answer = error_answer
        self._headers = headers
        self.disconnected = asyncio.Event()
        self._aborted = False

    def abort(self) -> None:
        """Ends the stream (gateway shutdown): cancels the call, then writes an error line."""
        self._aborted = True
        self._call.cancel()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        call = self._call
        watcher = asyncio.create_task(self._watch_disconnect(receive))
        try:
            await self._stream(scope, receive, send)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            call.cancel()  # no-op when the call already finished

    async def _watch_disconnect(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected.set()
                self._call.cancel()
                return

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        call = self._call
        # Trailers-only answers (the call failed before the server sent anything) arrive with
        # the initial metadata; they get a real HTTP status rather than a 200 stream.
        await call.initial_metadata()
        if call.done():
            code = await call.code()
            if code != grpc.StatusCode.OK and code != grpc.StatusCode.CANCELLED:
                error = self._error_of(await _as_error(call, code))
                await self._error_answer(error, scope, receive, send)
                return
        headers = [(b"content-type", NDJSON.encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in self._headers.items()]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        try:
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:
                    break
                await send(
                    {
                        "type": "http.response.body",
                        "body": self._encode(cast(Message, message)),
                        "more_body": True,
                    }
                )
        except grpc.aio.AioRpcError as exc:
            if self.disconnected.is_set():
                return
            if not self._aborted:
                await self._send_line(send, self._error_of(exc))
        except asyncio.CancelledError:
            if self.disconnected.is_set():
                return
            if not self._aborted:
                raise
        if self._aborted:
            await self._send_line(send, _SHUTTING_DOWN)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send_line(self, send: Send, error: ApiError) -> None:
        line = self._error_line(error)
        await send({"type": "http.response.body", "body": line, "more_body": True})


_SHUTTING_DOWN = gateway_error(
    503,
    errors_pb2.ErrorReason.CONTROL_PLANE_UNAVAILABLE,
    "the REST gateway is shutting down; reconnect",
)


async def _as_error(
    call: grpc.aio.UnaryStreamCall[Any, Any], code: grpc.StatusCode
) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        code,
        await call.initial_metadata(),
        await call.trailing_metadata(),
        details=await call.details(),
    )
