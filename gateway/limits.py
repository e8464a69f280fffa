"""How long the gateway waits for a client, and how many it serves at once.

uvicorn bounds idle keep-alive connections but not the time a client takes to send its request
headers (a slowloris connection that never finishes them is held forever), nor the time a
response waits for a client that stopped reading, and its ``limit_concurrency`` accepts every
connection and refuses only requests. ``limited_protocol`` wraps uvicorn's HTTP protocol with
all three: the header deadline, the write deadline and the connection cap. The body deadline is
enforced where the body is read (``gateway.app``: 408 and the connection closed).
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, fields
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

# What a connection over the cap gets before it is closed (nothing of it is read).
OVER_CAPACITY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 19\r\nconnection: close\r\n\r\nService Unavailable"
)


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """``lucid-cp serve|gateway --http-header-timeout/--http-body-timeout/--http-write-timeout/
    --http-max-connections``."""

    # Seconds from a connection's first byte (or from the first byte of the next request on a
    # kept-alive connection) until its request headers are complete; then it is closed.
    header_timeout: float = 10.0
    # Seconds to receive a whole request body once the headers are in: then 408, closed.
    body_timeout: float = 30.0
    # Seconds a response may wait for a client that does not read (the connection's send
    # buffers stay full): then the connection is closed, and a Watch stream's call cancelled.
    write_timeout: float = 30.0
    # Connections open at once; one more is answered 503 and closed at once, unread.
    max_connections: int = 1000
    # Seconds an idle kept-alive connection stays open.
    keep_alive_timeout: float = 5.0

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name.endswith("_timeout") and not (math.isfinite(value) and value > 0):
                raise ValueError(f"HTTP {field.name} must be a positive number of seconds")
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")


def limited_protocol(
    limits: HttpLimits, base: type[asyncio.Protocol] = AutoHTTPProtocol
) -> type[asyncio.Protocol]:
    """``base`` (uvicorn's httptools or h11 protocol) with ``limits`` applied per connection:

    - over ``max_connections`` open connections, a new one is answered 503 and closed at once,
      before anything of it is read (it holds no slot and no header deadline);
    - a connection whose request headers are not complete ``header_timeout`` after it opened
      or after the request's first byte is closed (between requests uvicorn's own keep-alive
      timeout applies). The check uses what both protocols share: ``cycle`` is set when a
      request's headers are complete;
    - a connection whose writes stay paused (the transport's buffer over its high-water mark,
      so the client is not reading) for ``write_timeout`` is aborted: its buffered output is
      dropped, uvicorn marks the request disconnected and wakes a ``send`` waiting to drain.
    """
    header_timeout = limits.header_timeout
    write_timeout = limits.write_timeout
    max_connections = limits.max_connections

    class Limited(base):  # type: ignore[valid-type,misc]
        _header_timer: asyncio.TimerHandle | None = None
        _write_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)  # adds this connection to self.connections
            if len(self.connections) > max_connections:
                self.connections.discard(self)  # never counted: a refusal frees no slot
                transport.write(OVER_CAPACITY)
                transport.close()
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if not self._awaiting_headers():
                self._disarm()
            elif self._header_timer is None and not self.transport.is_closing():
                self._arm()  # the first bytes of the next request on a kept-alive connection

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._write_timer is None:
                loop = asyncio.get_running_loop()
                self._write_timer = loop.call_later(write_timeout, self.transport.abort)

        def resume_writing(self) -> None:
            self._cancel_write_timer()
            super().resume_writing()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self._cancel_write_timer()
            super().connection_lost(exc)

        def _awaiting_headers(self) -> bool:
            return self.cycle is None or bool(self.cycle.response_complete)

        def _arm(self) -> None:
            loop = asyncio.get_running_loop()
            self._header_timer = loop.call_later(header_timeout, self._expire)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _cancel_write_timer(self) -> None:
            if self._write_timer is not None:
                self._write_timer.cancel()
                self._write_timer = None

        def _expire(self) -> None:
            self._header_timer = None
            if self._awaiting_headers():
                self.transport.close()

    Limited.__name__ = Limited.__qualname__ = f"Limited{base.__name__}"
    return Limited
