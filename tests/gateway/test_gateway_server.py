"""Running the gateway: in the caller's loop (start_gateway) and as a process (run_gateway)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest
from gw_fake_backend import FAKE_AUTH, FakeBackend

from gateway.server import bind_socket, start_gateway
from gateway.services import ServiceNotFound

ROOT = Path(__file__).resolve().parents[2]
WAIT = 10.0


def assert_nothing_listens(port: int) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


async def test_port_zero_binds_a_free_port_and_stop_releases_it(backend: FakeBackend) -> None:
    handle = await start_gateway(backend.target, "127.0.0.1:0")
    assert handle.port > 0 and handle.url == f"http://127.0.0.1:{handle.port}"
    async with httpx.AsyncClient(base_url=handle.url) as http:
        assert (await http.get("/healthz")).status_code == 200
    await handle.stop()
    assert_nothing_listens(handle.port)


async def test_busy_port_and_unknown_service_fail_at_startup(backend: FakeBackend) -> None:
    taken = bind_socket("127.0.0.1:0")
    try:
        with pytest.raises(OSError):
            await start_gateway(backend.target, f"127.0.0.1:{taken.getsockname()[1]}")
    finally:
        taken.close()
    with pytest.raises(ServiceNotFound):
        await start_gateway(backend.target, "127.0.0.1:0", services=["lucid.nope.v1.NoService"])


async def test_borrowed_channel_is_shared_and_left_open(backend: FakeBackend) -> None:
    async with grpc.aio.insecure_channel(backend.target) as channel:
        handle = await start_gateway(channel, "127.0.0.1:0")
        async with httpx.AsyncClient(base_url=handle.url, headers=FAKE_AUTH) as http:
            for _ in range(3):
                response = await http.get("/api/v1/service-discovery/services")
                assert response.status_code == 200
        await handle.stop()
        # The gateway did not close the caller's channel: it still works.
        reply = await channel.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=WAIT)
        assert reply == b"\x08\x01"  # HealthCheckResponse{status: SERVING}


async def test_keep_alive_requests_are_not_delayed_by_nagle(client: httpx.AsyncClient) -> None:
    """Regression: without TCP_NODELAY every keep-alive response waited ~40 ms for an ACK."""
    await client.get("/healthz")
    started = time.perf_counter()
    for _ in range(10):
        await client.get("/healthz")
    assert time.perf_counter() - started < 0.3  # 10 x 40 ms with the bug


async def test_run_gateway_serves_until_sigterm(backend: FakeBackend) -> None:
    probe = bind_socket("127.0.0.1:0")
    port = probe.getsockname()[1]
    probe.close()
    code = f"from gateway.server import run_gateway; run_gateway({backend.target!r}, '127.0.0.1:{port}')"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", code, cwd=ROOT, env=env)
    try:
        await _wait_healthy(f"http://127.0.0.1:{port}", process)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers=FAKE_AUTH
        ) as http:
            response = await http.get("/api/v1/service-discovery/services")
            assert response.status_code == 200
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), WAIT) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await asyncio.wait_for(process.wait(), WAIT)


async def _wait_healthy(url: str, process: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + WAIT
    async with httpx.AsyncClient(base_url=url, timeout=1.0) as http:
        while time.monotonic() < deadline:
            assert process.returncode is None, "run_gateway exited early"
            try:
                if (await http.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                await asyncio.sleep(0.05)  # not listening yet; polled against the deadline
    raise AssertionError(f"gateway at {url} did not become healthy in {WAIT}s")
