"""Real check targets on 127.0.0.1:0 that tests flip between healthy, slow, failing and dead.

``HttpTarget``: a tiny asyncio HTTP/1.1 server. Each path has its own behaviour, so one server
stands in for many instances; every request is recorded (path, method, headers, body, time).
``GrpcTarget``: a grpc.aio server with the standard grpc.health.v1 servicer, stoppable and
restartable on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

LOOPBACK = "127.0.0.1"


@dataclass
class Behaviour:
    status: int = 200
    delay: float = 0.0  # seconds before answering
    hang: bool = False  # never answer
    fail_next: int = 0  # answer the next N requests with 503, then behave as above


@dataclass(frozen=True)
class Request:
    path: str
    method: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic()


@dataclass
class HttpTarget:
    server: asyncio.Server | None = None
    port: int = 0
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self, *, ssl: object = None) -> HttpTarget:
        self.server = await asyncio.start_server(self._serve, LOOPBACK, self.port, ssl=ssl)  # type: ignore[arg-type]
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self.server.wait_closed()
            self.server = None

    def behave(self, path: str, **kw: object) -> Behaviour:
        behaviour = Behaviour(**kw)  # type: ignore[arg-type]
        self.behaviours[path] = behaviour
        return behaviour

    def hits(self, path: str, since: float = 0.0) -> list[Request]:
        return [r for r in self.requests if r.path == path and r.at >= since]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        method, path, _ = (await reader.readuntil(b"\r\n")).decode().split(" ", 2)
        headers: dict[str, str] = {}
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.requests.append(Request(path, method, headers, body, time.monotonic()))
        behaviour = self.behaviours.get(path, Behaviour())
        status = behaviour.status
        if behaviour.fail_next > 0:
            behaviour.fail_next -= 1
            status = 503
        elif behaviour.hang:
            await asyncio.sleep(3600)
        elif behaviour.delay:
            await asyncio.sleep(behaviour.delay)
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\n\r\nok".encode())
        with contextlib.suppress(ConnectionError):
            await writer.drain()


class GrpcTarget:
    def __init__(self) -> None:
        self.port = 0
        self.server: grpc.aio.Server | None = None
        self.health = health.aio.HealthServicer()

    async def start(self) -> GrpcTarget:
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port(f"{LOOPBACK}:{self.port}")
        await self.server.start()
        return self

    async def set(self, service: str, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set(service, status)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)
            self.server = None


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0, what: str = "condition"
) -> None:
    """Polls ``condition`` every 10 ms until true; fails the test after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)
