"""How long the gateway waits for a client, and how many it serves at once.

uvicorn bounds idle keep-alive connections and concurrency but not the time a client takes to
send its request headers (a slowloris connection that never finishes them is held forever);
``header_deadline_protocol`` adds that deadline to uvicorn's HTTP protocol. The body deadline is
enforced where the body is read (``gateway.app``: 408 and the connection closed).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """``lucid-cp serve|gateway --http-header-timeout/--http-body-timeout/--http-max-connections``."""

    # Seconds from a connection's first byte (or from the first byte of the next request on a
    # kept-alive connection) until its request headers are complete; then it is closed.
    header_timeout: float = 10.0
    # Seconds to receive a whole request body once the headers are in: then 408, closed.
    body_timeout: float = 30.0
    # Connections (and requests in progress) served at once; above it new requests get 503.
    max_connections: int = 1000
    # Seconds an idle kept-alive connection stays open.
    keep_alive_timeout: float = 5.0

    def __post_init__(self) -> None:
        if min(self.header_timeout, self.body_timeout, self.keep_alive_timeout) <= 0:
            raise ValueError("HTTP timeouts must be positive")
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")


def header_deadline_protocol(
    seconds: float, base: type[asyncio.Protocol] = AutoHTTPProtocol
) -> type[asyncio.Protocol]:
    """``base`` (uvicorn's httptools or h11 protocol) that closes a connection whose request
    headers are not complete ``seconds`` after it opened or after the request's first byte.

    Between requests uvicorn's own keep-alive timeout applies. The check uses what both
    protocols share: ``cycle`` is set when a request's headers are complete."""

    class HeaderDeadline(base):  # type: ignore[valid-type,misc]
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if not self._awaiting_headers():
                self._disarm()
            elif self._header_timer is None and not self.transport.is_closing():
                self._arm()  # the first bytes of the next request on a kept-alive connection

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _awaiting_headers(self) -> bool:
            return self.cycle is None or bool(self.cycle.response_complete)

        def _arm(self) -> None:
            loop = asyncio.get_running_loop()
            self._header_timer = loop.call_later(seconds, self._expire)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expire(self) -> None:
            self._header_timer = None
            if self._awaiting_headers():
                self.transport.close()

    HeaderDeadline.__name__ = HeaderDeadline.__qualname__ = f"HeaderDeadline{base.__name__}"
    return HeaderDeadline
