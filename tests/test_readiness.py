"""/readyz follows the store and names what is down (real etcd, real control plane and gateway)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import grpc
import httpx
import pytest
from etcd_server import EtcdProcess, free_port
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway.app import READINESS_DEPENDENCIES
from gateway.server import start_gateway
from lucid_cp import app as app_module
from lucid_cp.app import start_control_plane
from lucid_cp.clock import FakeClock
from lucid_cp.readiness import STORE_HEALTH_SERVICE, StoreMonitor
from tests.gateway.gw_live import SETTINGS

WAIT = 15.0  # bound on each wait; the monitor probes every second
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE = "lucid.test.v1.TestService"


async def ready_becomes(http: httpx.AsyncClient, status: int) -> Any:
    """Polls /readyz until it answers ``status`` (at most WAIT seconds); returns the body."""
    async with asyncio.timeout(WAIT):
        while True:
            response = await http.get("/readyz")
            if response.status_code == status:
                return response.json()
            await asyncio.sleep(0.1)  # poll: the answer is checked, the interval proves nothing


def test_the_gateway_asks_for_the_name_the_control_plane_sets() -> None:
    assert READINESS_DEPENDENCIES["store"] == STORE_HEALTH_SERVICE


@pytest.mark.etcd
async def test_readyz_names_the_store_while_etcd_is_down_and_the_plane_when_it_is_gone(
    fresh_etcd: EtcdProcess,
) -> None:
    plane = await start_control_plane(replace(SETTINGS, store_url=fresh_etcd.url))
    gateway = None
    try:
        gateway = await start_gateway(plane.grpc_target, "127.0.0.1:0", readiness_timeout=0.5)
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10.0) as http:
            assert (await http.get("/readyz")).json() == {"status": "ready"}
            fresh_etcd.stop()
            assert await ready_becomes(http, 503) == {"status": "unavailable", "down": ["store"]}
            fresh_etcd.start()
            assert await ready_becomes(http, 200) == {"status": "ready"}
            await plane.stop(grace=0)
            body = await ready_becomes(http, 503)
            assert body == {"status": "unavailable", "down": ["control-plane"]}
    finally:
        if gateway is not None:
            await gateway.stop()
        await plane.stop(grace=0)


class ProbedStore:
    """Answers the monitor's probe, or raises ``error`` (an unexpected exception: a bug)."""

    def __init__(self) -> None:
        self.error: Exception | None = None

    async def current_revision(self) -> int:
        if self.error is not None:
            raise self.error
        return 1


async def statuses(servicer: health.aio.HealthServicer) -> set[int]:
    names = ["", STORE_HEALTH_SERVICE, SERVICE]
    request = health_pb2.HealthCheckRequest
    return {(await servicer.Check(request(service=n), None)).status for n in names}


async def next_probe(clock: FakeClock) -> None:
    """Lets the monitor's interval pass once it is waiting for it."""
    async with asyncio.timeout(WAIT):
        while True:
            if clock.sleepers == 1:
                break
            await asyncio.sleep(0.01)  # poll: the condition is checked, the interval proves nothing
    clock.advance(1.0)


async def statuses_become(servicer: health.aio.HealthServicer, status: int) -> None:
    async with asyncio.timeout(WAIT):
        while True:
            if await statuses(servicer) == {status}:
                return
            await asyncio.sleep(0.01)  # poll, as above


async def test_a_probe_that_raises_unexpectedly_is_not_serving_and_probing_goes_on() -> None:
    store, clock = ProbedStore(), FakeClock()
    servicer = health.aio.HealthServicer()
    monitor = StoreMonitor(store, servicer, [SERVICE], clock, interval=1.0)  # type: ignore[arg-type]
    await monitor.start()
    try:
        assert await statuses(servicer) == {SERVING}
        store.error = RuntimeError("a bug in the store client")
        await next_probe(clock)
        await statuses_become(servicer, NOT_SERVING)
        assert monitor.reachable is False
        store.error = None
        await next_probe(clock)  # the monitor is still probing...
        await statuses_become(servicer, SERVING)  # ...and follows the store back
    finally:
        await monitor.stop()


async def test_health_is_not_serving_before_the_first_probe_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server is up while the first probe is still out: nothing may read ready yet (grpc's
    servicer starts "" as SERVING, and the gateway counts a missing lucid.store as serving)."""
    probing, answer = asyncio.Event(), asyncio.Event()

    class FirstProbeWaits(StoreMonitor):
        async def check(self) -> bool:
            if not answer.is_set():
                probing.set()
                await answer.wait()
            return await super().check()

    monkeypatch.setattr(app_module, "StoreMonitor", FirstProbeWaits)
    addr = f"127.0.0.1:{free_port()}"
    starting = asyncio.create_task(start_control_plane(replace(SETTINGS, grpc_addr=addr)))
    plane = None
    try:
        async with asyncio.timeout(WAIT):
            await probing.wait()
        async with grpc.aio.insecure_channel(addr, options=[("grpc.enable_http_proxy", 0)]) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            for name in ("", STORE_HEALTH_SERVICE):
                request = health_pb2.HealthCheckRequest(service=name)
                response = await stub.Check(request, timeout=WAIT)
                assert response.status == NOT_SERVING, name
            answer.set()
            async with asyncio.timeout(WAIT):
                plane = await starting
            assert (
                await stub.Check(health_pb2.HealthCheckRequest(), timeout=WAIT)
            ).status == SERVING
    finally:
        answer.set()
        if plane is None:
            plane = await starting
        await plane.stop(grace=0)
