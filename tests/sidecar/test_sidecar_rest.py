"""SidecarService over REST: HTTP client -> real gateway -> real control plane. Every sidecar
path with its success and error statuses, in the seed's error shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import pytest

from tests.gateway.gw_live import ADMIN, SETTINGS, bearer, registration, start_stack

SIDECAR = "/api/v1/sidecar-proxy"
GW = bearer("api-gateway")
OTHER = bearer("wallet-service")


@pytest.fixture
async def live() -> AsyncIterator[httpx.AsyncClient]:
    stack = await start_stack(replace(SETTINGS, rate_limits_enabled=False))
    try:
        async with httpx.AsyncClient(base_url=stack.gateway.url, timeout=10.0) as http:
            yield http
    finally:
        await stack.stop()


def error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()["error"]
    assert body["code"] == code, body
    return body


def fields(err: dict[str, Any]) -> list[str]:
    return [v["field"] for v in err["details"]["fieldViolations"]]


def rate_limit(requests: int = 100) -> dict[str, Any]:
    return {
        "policyId": "rate-limit-api",
        "type": "rate-limit",
        "rules": [{"action": "rate-limit", "parameters": {"requests": requests, "seconds": 60}}],
    }


async def register(http: httpx.AsyncClient, name: str = "api-gateway") -> str:
    body = registration(name)
    response = await http.post(
        "/api/v1/service-discovery/services", json=body, headers=bearer(name)
    )
    assert response.status_code == 201, response.text
    return str(body["serviceId"])


async def test_configuration_lifecycle(live: httpx.AsyncClient) -> None:
    sid = await register(live)
    body = {
        "serviceId": sid,
        "policies": [rate_limit()],
        "routing": {
            "defaultRoute": "blockchain-core",
            "loadBalancing": {"algorithm": "least-connections"},
            "routes": [{"match": {"path": "/api/*"}, "destination": "10.0.0.7:8443"}],
        },
        "security": {"mTLS": {"enabled": True}, "authentication": {"methods": ["jwt", "mtls"]}},
    }
    written = await live.post(f"{SIDECAR}/config", json=body, headers=GW)
    assert written.status_code == 200, written.text
    out = written.json()
    assert out["version"] == str(out["revision"]) == out["configuration"]["version"]
    assert out["serviceName"] == "api-gateway"
    assert out["configuration"]["routing"]["loadBalancing"]["algorithm"] == "least-connections"
    assert out["configuration"]["security"]["authentication"]["methods"] == ["jwt", "mtls"]
    assert out["warnings"][0]["code"] == "unknown-destination"

    got = await live.get(f"{SIDECAR}/config/{sid}", headers=GW)
    assert got.status_code == 200 and got.json()["revision"] == out["revision"]
    error(await live.get(f"{SIDECAR}/config/{sid}", headers=OTHER), 403, "LUCID_ERR_1902")
    error(await live.delete(f"{SIDECAR}/config/{sid}", headers=OTHER), 403, "LUCID_ERR_1902")
    error(await live.post(f"{SIDECAR}/config", json=body, headers=OTHER), 403, "LUCID_ERR_1902")
    error(await live.get(f"{SIDECAR}/config/not-a-uuid", headers=GW), 400, "LUCID_ERR_1101")
    error(await live.get(f"{SIDECAR}/config/{sid}"), 401, "LUCID_ERR_1901")

    deleted = await live.delete(f"{SIDECAR}/config/{sid}", headers=GW)
    assert deleted.status_code == 200 and deleted.json()["revision"] > out["revision"]
    error(await live.get(f"{SIDECAR}/config/{sid}", headers=GW), 404, "LUCID_ERR_1907")
    error(await live.delete(f"{SIDECAR}/config/{sid}", headers=GW), 404, "LUCID_ERR_1907")


async def test_configure_errors(live: httpx.AsyncClient) -> None:
    unknown = {
        "serviceId": "00000000-0000-4000-8000-000000000000",
        "routing": {"defaultRoute": "a-b-c"},
    }
    error(await live.post(f"{SIDECAR}/config", json=unknown, headers=ADMIN), 404, "LUCID_ERR_1002")
    sid = await register(live)
    no_route = {"serviceId": sid, "routing": {}}
    err = error(
        await live.post(f"{SIDECAR}/config", json=no_route, headers=GW), 400, "LUCID_ERR_1103"
    )
    assert fields(err) == ["routing.defaultRoute"]
    weights = {
        "serviceId": sid,
        "routing": {
            "defaultRoute": "a-b-c",
            "routes": [{"match": {"path": "/a"}, "destination": "x-y-z", "weight": 60}],
        },
    }
    err = error(
        await live.post(f"{SIDECAR}/config", json=weights, headers=GW), 400, "LUCID_ERR_1103"
    )
    assert fields(err) == ["routing.routes[0].weight"]
    dupes = {
        "serviceId": sid,
        "routing": {"defaultRoute": "a-b-c"},
        "policies": [rate_limit(), rate_limit()],
    }
    err = error(await live.post(f"{SIDECAR}/config", json=dupes, headers=GW), 400, "LUCID_ERR_1101")
    assert fields(err) == ["policies[1].policyId"]
    enum = {
        "serviceId": sid,
        "routing": {"defaultRoute": "a-b-c"},
        "policies": [rate_limit() | {"type": "nope"}],
    }
    error(await live.post(f"{SIDECAR}/config", json=enum, headers=GW), 400, "LUCID_ERR_1101")


async def test_policies(live: httpx.AsyncClient) -> None:
    ids = [await register(live) for _ in range(2)]
    for sid in ids:
        body = {"serviceId": sid, "routing": {"defaultRoute": "a-b-c"}, "policies": [rate_limit()]}
        assert (await live.post(f"{SIDECAR}/config", json=body, headers=GW)).status_code == 200

    put = await live.put(f"{SIDECAR}/policies/rate-limit-api", json=rate_limit(5), headers=GW)
    assert put.status_code == 200, put.text
    out = put.json()
    assert out["configurationsUpdated"] == 2 and sorted(out["serviceIds"]) == sorted(ids)
    assert out["policy"]["priority"] == 100 and out["serviceName"] == "api-gateway"
    for sid in ids:
        config = (await live.get(f"{SIDECAR}/config/{sid}", headers=GW)).json()
        assert config["configuration"]["policies"][0]["rules"][0]["parameters"]["requests"] == 5
        assert config["revision"] == out["revision"]

    got = await live.get(
        f"{SIDECAR}/policies/rate-limit-api?serviceName=api-gateway", headers=ADMIN
    )
    assert got.status_code == 200 and got.json()["revision"] == out["revision"]
    assert (await live.get(f"{SIDECAR}/policies/rate-limit-api", headers=GW)).status_code == 200

    path = f"{SIDECAR}/policies/rate-limit-api"
    error(await live.put(path, json=rate_limit(), headers=ADMIN), 400, "LUCID_ERR_1102")
    error(await live.get(f"{path}?serviceName=api-gateway", headers=OTHER), 403, "LUCID_ERR_1902")
    error(
        await live.put(f"{path}?serviceName=api-gateway", json=rate_limit(), headers=OTHER),
        403,
        "LUCID_ERR_1902",
    )
    error(await live.put(path, json=rate_limit(), headers=OTHER), 404, "LUCID_ERR_1907")
    error(await live.get(f"{SIDECAR}/policies/no-such-one", headers=GW), 404, "LUCID_ERR_1907")
    err = error(
        await live.put(f"{SIDECAR}/policies/other-one", json=rate_limit(), headers=GW),
        400,
        "LUCID_ERR_1102",
    )
    assert fields(err) == ["policyId"]
    bad = rate_limit() | {"rules": [{"action": "rate-limit", "parameters": {"requests": 0}}]}
    err = error(await live.put(path, json=bad, headers=GW), 400, "LUCID_ERR_1102")
    assert fields(err) == ["rules[0].parameters.requests"]
    lost = await live.put(
        f"{path}?expectedRevision={out['revision'] - 1}", json=rate_limit(), headers=GW
    )
    error(lost, 409, "LUCID_ERR_1905")
