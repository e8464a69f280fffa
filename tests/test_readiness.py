"""/readyz follows the store and names what is down (real etcd, real control plane and gateway)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import httpx
import pytest
from etcd_server import EtcdProcess
from gw_live import SETTINGS

from gateway.app import READINESS_DEPENDENCIES
from gateway.server import start_gateway
from lucid_cp.app import start_control_plane
from lucid_cp.readiness import STORE_HEALTH_SERVICE

WAIT = 15.0  # bound on each wait; the monitor probes every second


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
