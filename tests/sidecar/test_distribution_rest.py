"""The distribution reads over REST (real gateway -> real control plane), with a test sidecar
connected over gRPC: health (200/503/404), metrics windows and their query parameters, rollout
and the sidecar list (admin only), the effective configuration."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import grpc
import httpx
import pytest

from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2 as pb
from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2_grpc
from tests.gateway.gw_live import ADMIN, SETTINGS, start_stack
from tests.sidecar.fake_sidecar import FakeSidecar
from tests.sidecar.test_sidecar_rest import GW, OTHER, error, register

SIDECAR = "/api/v1/sidecar-proxy"
GRPC_GW = tuple((k.lower(), v) for k, v in GW.items())  # the same token as gRPC metadata


@dataclass
class Live:
    http: httpx.AsyncClient
    stub: sidecar_pb2_grpc.SidecarServiceStub


@pytest.fixture
async def live() -> AsyncIterator[Live]:
    stack = await start_stack(replace(SETTINGS, rate_limits_enabled=False))
    try:
        async with (
            httpx.AsyncClient(base_url=stack.gateway.url, timeout=10.0) as http,
            grpc.aio.insecure_channel(stack.plane.grpc_target) as channel,
        ):
            yield Live(http, sidecar_pb2_grpc.SidecarServiceStub(channel))
    finally:
        await stack.stop()


def report(requests: int, **fields: object) -> pb.ConnectRequest:
    buckets = [0] * 21
    buckets[3] = requests  # (5, 10] ms
    now = int(time.time())
    r = pb.MetricsReport(
        requests=requests,
        by_status={"2xx": requests},
        latency_buckets=buckets if requests else [],
        latency_sum_ms=7.0 * requests,
        healthy=True,
        **fields,  # type: ignore[arg-type]
    )
    r.window_start.FromSeconds(now - 5)
    r.window_end.FromSeconds(now)
    return pb.ConnectRequest(report=r)


async def poll(
    http: httpx.AsyncClient, path: str, want: int, timeout: float = 5.0
) -> httpx.Response:
    async with asyncio.timeout(timeout):
        while (response := await http.get(path, headers=GW)).status_code != want:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    return response


async def test_health_metrics_and_effective_config(live: Live) -> None:
    sid = await register(live.http)
    health = f"{SIDECAR}/health?serviceId={sid}"
    error(await live.http.get(health, headers=GW), 404, "LUCID_ERR_1907")
    side = FakeSidecar(live.stub, sid, GRPC_GW)
    try:
        await side.wait(1)
        unhealthy = (await poll(live.http, health, 503)).json()
        assert unhealthy["healthy"] is False and unhealthy["failed"] == ["self-healthy"]
        assert unhealthy["sidecars"][0]["serviceId"] == sid
        side.send(report(40, connections_active=3, connections_opened=5, bytes_in=800))
        body = (await poll(live.http, health, 200)).json()
        assert body["healthy"] is True and body["sidecars"][0]["connected"] is True

        query = f"{SIDECAR}/metrics?timeRange=5m&metrics=requests&metrics=latency"
        got = (await live.http.get(query, headers=GW)).json()
        assert got["hasReports"] is True and got["serviceName"] == "api-gateway"
        assert got["metrics"]["requests"]["total"] == 40
        assert got["metrics"]["requests"]["byStatus"] == {"2xx": 40}
        assert 5 < got["metrics"]["latency"]["p50"] <= 10
        assert set(got["metrics"]) == {"requests", "latency"}
        one = (await live.http.get(f"{SIDECAR}/metrics?serviceId={sid}", headers=GW)).json()
        assert one["serviceId"] == sid and one["timeRange"] == "15m"
        assert one["metrics"]["connections"] == {"active": 3, "total": 5}
        error(
            await live.http.get(f"{SIDECAR}/metrics?timeRange=2m", headers=GW),
            400,
            "LUCID_ERR_1101",
        )
        error(
            await live.http.get(f"{SIDECAR}/metrics?serviceId={sid}", headers=OTHER),
            403,
            "LUCID_ERR_1902",
        )

        effective = await live.http.get(f"{SIDECAR}/config/{sid}/effective", headers=GW)
        assert effective.status_code == 200, effective.text
        assert effective.json()["workload"]["name"] == "api-gateway"
        error(
            await live.http.get(f"{SIDECAR}/config/{sid}/effective", headers=OTHER),
            403,
            "LUCID_ERR_1902",
        )
        missing = "7d1f0000-0000-4000-8000-000000000000"
        error(
            await live.http.get(f"{SIDECAR}/config/{missing}/effective", headers=GW),
            404,
            "LUCID_ERR_1002",
        )
    finally:
        await side.close()


async def test_rollout_and_sidecar_list_are_admin_only(live: Live) -> None:
    sid = await register(live.http)
    side = FakeSidecar(live.stub, sid, GRPC_GW)
    try:
        version = (await side.wait(1)).version
        error(await live.http.get(f"{SIDECAR}/rollout", headers=GW), 403, "LUCID_ERR_1902")
        error(await live.http.get(f"{SIDECAR}/sidecars", headers=GW), 403, "LUCID_ERR_1902")
        async with asyncio.timeout(5):
            while True:
                status = (
                    await live.http.get(f"{SIDECAR}/rollout?revision={version}", headers=ADMIN)
                ).json()
                if status.get("applied") == 1:
                    break
                await asyncio.sleep(0.02)
        assert status["connected"] == 1 and status["revision"] == version
        listed = (await live.http.get(f"{SIDECAR}/sidecars?limit=10", headers=ADMIN)).json()
        assert listed["total"] == 1 and listed["sidecars"][0]["serviceId"] == sid
        assert listed["sidecars"][0]["appliedVersion"] == version
        error(
            await live.http.get(f"{SIDECAR}/sidecars?limit=0", headers=ADMIN), 400, "LUCID_ERR_1101"
        )
    finally:
        await side.close()
