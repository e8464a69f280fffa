"""Running the gateway: uvicorn inside the caller's event loop, or as a blocking process."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import uvicorn

from gateway.app import create_app
from gateway.limits import HttpLimits, limited_protocol

DEFAULT_HTTP_ADDR = "127.0.0.1:8080"


def split_http_addr(addr: str) -> tuple[str, int]:
    """ "host:port" (IPv6 as "[::1]:port"); port 0 picks a free port."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"HTTP address must be host:port, got {addr!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def bind_socket(addr: str) -> socket.socket:
    """A listening TCP socket; binding here (not in uvicorn) makes port errors raise."""
    host, port = split_http_addr(addr)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP: asyncio only sets TCP_NODELAY on accepted sockets whose proto
    # says TCP, and without it Nagle + delayed ACKs add ~40 ms to every keep-alive response.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class _Server(uvicorn.Server):
    """uvicorn that reports readiness and leaves signal handling to its embedder."""

    def __init__(self, config: uvicorn.Config, *, on_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()
        self._on_shutdown = on_shutdown

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._on_shutdown()  # open NDJSON streams would otherwise hold the shutdown up
        await super().shutdown(sockets=sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn would install process-wide handlers and re-raise the signal after shutdown;
        # the embedder (lucid-cp serve, or run_gateway below) owns signals instead.
        yield

    def request_exit(self) -> None:
        """First call: graceful shutdown; second call: stop waiting for connections."""
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True


@dataclass
class GatewayHandle:
    """A running gateway. ``port`` is the bound port (useful with port 0)."""

    host: str
    port: int
    _server: _Server
    _task: asyncio.Task[None]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        """Stops accepting, lets in-flight requests finish (streams are cancelled), closes
        the gRPC channel."""
        self._server.should_exit = True
        await self._task


def _server(grpc_target: str | grpc.aio.Channel, limits: HttpLimits, **options: Any) -> _Server:
    app = create_app(grpc_target, body_timeout=limits.body_timeout, **options)
    config = uvicorn.Config(
        app,
        lifespan="on",
        log_config=None,  # logging belongs to the embedding process (lucid_cp.logs)
        access_log=False,
        timeout_graceful_shutdown=5,
        server_header=False,
        http=limited_protocol(limits),  # the header and write deadlines, the connection cap
        # The connection cap is the protocol's; uvicorn's own check counts the connection that
        # makes the request (len >= limit), so it is one above the cap, never refusing a request
        # on an admitted connection. It still bounds requests in progress, among them those
        # still running for clients that have gone.
        limit_concurrency=limits.max_connections + 1,
        timeout_keep_alive=limits.keep_alive_timeout,  # type: ignore[arg-type]
    )
    return _Server(config, on_shutdown=app.state.gateway.abort_streams)


def _listening(http_addr: str | socket.socket) -> socket.socket:
    return http_addr if isinstance(http_addr, socket.socket) else bind_socket(http_addr)


async def start_gateway(
    grpc_target: str | grpc.aio.Channel,
    http_addr: str | socket.socket = DEFAULT_HTTP_ADDR,
    *,
    limits: HttpLimits | None = None,
    **app_options: Any,
) -> GatewayHandle:
    """Starts the gateway in the running event loop and returns once it accepts connections.

    ``http_addr`` is "host:port" or a socket from ``bind_socket`` (the gateway then owns it).
    Raises OSError if ``http_addr`` cannot be bound, and ServiceNotFound/TemplateError for a
    bad service configuration. ``limits`` bound slow clients and concurrency (defaults:
    HttpLimits()); ``app_options`` go to ``create_app``.
    """
    server = _server(grpc_target, limits or HttpLimits(), **app_options)
    sock = _listening(http_addr)
    host, port = sock.getsockname()[:2]
    task = asyncio.create_task(server.serve(sockets=[sock]), name=f"lucid-gateway:{port}")
    ready = asyncio.create_task(server.ready.wait())
    try:
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        ready.cancel()
    if task.done():
        sock.close()
        task.result()
        raise RuntimeError("REST gateway exited during startup")
    return GatewayHandle(host, port, server, task)


def run_gateway(
    grpc_target: str,
    http_addr: str | socket.socket = DEFAULT_HTTP_ADDR,
    *,
    limits: HttpLimits | None = None,
    on_signals_handled: Callable[[], None] = lambda: None,
) -> None:
    """Blocking entry point (``lucid-cp gateway``): serves until SIGINT/SIGTERM, then shuts
    down gracefully and returns (a second signal stops waiting for open connections).
    ``http_addr`` is "host:port" or a socket from ``bind_socket`` (the gateway then owns it).
    ``limits`` bound slow clients and concurrency (defaults: HttpLimits()).
    ``on_signals_handled`` runs once a signal would shut down gracefully (announce then)."""
    server = _server(grpc_target, limits or HttpLimits())
    sock = _listening(http_addr)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, server.request_exit)
        on_signals_handled()
        await server.serve(sockets=[sock])

    try:
        asyncio.run(serve())
    finally:
        sock.close()
