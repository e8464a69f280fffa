"""A bare grpc.aio echo server (the raw baseline of RPC benchmarks) and a bounded load loop."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from scripts.bench.children import announce_ready, wait_for_stdin_eof
from scripts.bench.common import LOOPBACK, latency_summary


class _EchoHandler(grpc.GenericRpcHandler):
    """Answers every unary method with the request bytes, untouched (no (de)serialization)."""

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return request

        return grpc.unary_unary_rpc_method_handler(echo)


async def serve_echo(options: list[tuple[str, Any]]) -> None:
    """A child role: a bare grpc.aio server echoing every unary call, until stdin closes."""
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((_EchoHandler(),))
    port = server.add_insecure_port(f"{LOOPBACK}:0")
    await server.start()
    announce_ready(port=port, pid=os.getpid())
    await wait_for_stdin_eof()
    await server.stop(0)


@dataclass
class LoadResult:
    latencies: list[float]
    seconds: float
    errors: list[str]
    done: int

    @property
    def per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "done": self.done,
            "seconds": self.seconds,
            "per_s": self.per_second,
            "errors": len(self.errors),
            "first_errors": self.errors[:3],
            **latency_summary(self.latencies),
        }


async def run_load(
    n: int,
    concurrency: int,
    op: Callable[[int], Awaitable[Any]],
    *,
    budget_s: float,
    offset: int = 0,
) -> LoadResult:
    """Runs op(offset)..op(offset+n-1) on ``concurrency`` tasks; stops early after budget_s."""
    indices = iter(range(offset, offset + n))
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + budget_s

    async def worker() -> None:
        for i in indices:
            if time.monotonic() > deadline:
                return
            t = time.perf_counter()
            try:
                await op(i)
            except Exception as exc:
                detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
                errors.append(f"{type(exc).__name__}: {detail}")
                continue
            latencies.append(time.perf_counter() - t)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return LoadResult(latencies, time.perf_counter() - started, errors, len(latencies))
