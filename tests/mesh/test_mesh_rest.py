"""Mesh control over REST: HTTP client -> real gateway -> real control plane. Every mesh path
with its success and error statuses, and the seed's error shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.gateway.gw_live import ADMIN, Stack, bearer, registration, start_stack

from .conftest import CA

MESH = "/api/v1/service-mesh"


@pytest.fixture
async def live() -> AsyncIterator[httpx.AsyncClient]:
    stack: Stack = await start_stack()
    try:
        async with httpx.AsyncClient(
            base_url=stack.gateway.url, timeout=10.0, headers=ADMIN
        ) as http:
            yield http
    finally:
        await stack.stop()


def policy(**over: Any) -> dict[str, Any]:
    return {
        "name": "gw-to-chain",
        "source": "api-gateway",
        "destination": "blockchain-core",
        "rules": [{"action": "allow"}],
    } | over


def error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()["error"]
    assert body["code"] == code, body
    return body


def fields(err: dict[str, Any]) -> list[str]:
    """Field violations, named relative to the body (the gateway strips `policy.`/`config.`)."""
    return [v["field"] for v in err["details"]["fieldViolations"]]


@pytest.mark.parametrize("kind", ["traffic-policies", "security-policies"])
async def test_policy_lifecycle(live: httpx.AsyncClient, kind: str) -> None:
    created = await live.post(f"{MESH}/{kind}", json=policy())
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["policy"]["priority"] == 100 and body["policy"]["mode"] == "enforce"
    assert isinstance(body["revision"], int)
    assert body["warnings"][0]["code"] == "unmatched-selector"
    revision = body["revision"]

    error(await live.post(f"{MESH}/{kind}", json=policy()), 409, "LUCID_ERR_1908")

    got = await live.get(f"{MESH}/{kind}/gw-to-chain")
    assert got.status_code == 200 and got.json()["revision"] == revision
    assert got.json()["readRevision"] >= revision
    error(await live.get(f"{MESH}/{kind}/gw-to-chain?namespace=prod"), 404, "LUCID_ERR_1907")

    replaced = await live.put(
        f"{MESH}/{kind}/gw-to-chain?expectedRevision={revision}", json=policy(priority=5)
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["policy"]["priority"] == 5
    lost = await live.put(
        f"{MESH}/{kind}/gw-to-chain?expectedRevision={revision}", json=policy(priority=6)
    )
    error(lost, 409, "LUCID_ERR_1905")
    code = "LUCID_ERR_1201" if kind == "traffic-policies" else "LUCID_ERR_1203"
    mismatch = await live.put(f"{MESH}/{kind}/other-name", json=policy())
    assert fields(error(mismatch, 400, code)) == ["name"]

    listed = (await live.get(f"{MESH}/{kind}?enabled=true&limit=1")).json()
    assert listed["total"] == 1 and listed["limit"] == 1 and listed["revision"] >= revision
    assert [p["policy"]["name"] for p in listed["policies"]] == ["gw-to-chain"]
    assert (await live.get(f"{MESH}/{kind}?destination=wallet")).json().get("total", 0) == 0

    deleted = await live.delete(f"{MESH}/{kind}/gw-to-chain")
    assert deleted.status_code == 200 and deleted.json()["revision"] > revision
    error(await live.delete(f"{MESH}/{kind}/gw-to-chain"), 404, "LUCID_ERR_1907")


async def test_invalid_bodies_are_400_with_the_seed_code(live: httpx.AsyncClient) -> None:
    split = policy(
        rules=[
            {"action": "weighted-split", "weight": 50, "parameters": {"destination": "a-svc"}},
            {"action": "weighted-split", "weight": 40, "parameters": {"destination": "b-svc"}},
        ]
    )
    err = error(await live.post(f"{MESH}/traffic-policies", json=split), 400, "LUCID_ERR_1201")
    assert fields(err) == ["rules[0].weight"]
    bad_security = policy(rules=[{"action": "require-role", "authorization": {}}])
    err = error(
        await live.post(f"{MESH}/security-policies", json=bad_security), 400, "LUCID_ERR_1203"
    )
    assert fields(err) == ["rules[0].authorization.roles"]
    # An unknown enum string is the resource's own code too.
    err = error(
        await live.post(f"{MESH}/traffic-policies", json=policy(rules=[{"action": "nope"}])),
        400,
        "LUCID_ERR_1201",
    )
    err = error(await live.put(f"{MESH}/mtls", json={"mode": "strict"}), 400, "LUCID_ERR_1204")
    assert fields(err) == ["certAuthority"]


async def test_circuit_breakers(live: httpx.AsyncClient) -> None:
    config = {"failureThreshold": 5, "recoveryTimeout": 30}
    path = f"{MESH}/circuit-breakers/blockchain-core"
    error(await live.put(path, json=config), 404, "LUCID_ERR_1907")
    reg = registration("blockchain-core")
    registered = await live.post(
        "/api/v1/service-discovery/services", json=reg, headers=bearer("blockchain-core")
    )
    assert registered.status_code == 201
    updated = await live.put(path, json=config)
    assert updated.status_code == 200, updated.text
    assert updated.json()["config"]["errorTypes"] == ["5xx", "timeout", "connection-error"]
    revision = updated.json()["revision"]
    err = error(
        await live.put(path, json=config | {"halfOpenMaxCalls": 1, "successThreshold": 2}),
        400,
        "LUCID_ERR_1202",
    )
    assert fields(err) == ["halfOpenMaxCalls"]
    error(
        await live.put(f"{path}?expectedRevision={revision + 50}", json=config),
        409,
        "LUCID_ERR_1905",
    )
    assert (await live.get(path)).json()["revision"] == revision
    listed = (await live.get(f"{MESH}/circuit-breakers")).json()
    assert [c["serviceName"] for c in listed["circuitBreakers"]] == ["blockchain-core"]
    assert (await live.delete(path)).status_code == 200
    error(await live.get(path), 404, "LUCID_ERR_1907")


async def test_mtls(live: httpx.AsyncClient) -> None:
    error(await live.get(f"{MESH}/mtls"), 404, "LUCID_ERR_1907")
    updated = await live.put(f"{MESH}/mtls", json={"mode": "strict", "certAuthority": CA})
    assert updated.status_code == 200, updated.text
    got = (await live.get(f"{MESH}/mtls")).json()
    assert got["config"]["mode"] == "strict" and got["config"]["minTlsVersion"] == "1.2"
    assert got["revision"] == updated.json()["revision"]


async def test_explain(live: httpx.AsyncClient) -> None:
    deny = policy(name="no-admin", rules=[{"action": "deny", "match": {"path": "/admin*"}}])
    assert (await live.post(f"{MESH}/security-policies", json=deny)).status_code == 201
    question = {
        "source": {"name": "api-gateway", "cluster": "api-gateway", "plane": "ops"},
        "destination": {"name": "blockchain-core"},
        "path": "/admin/keys",
    }
    answer = await live.post(f"{MESH}/explain", json=question)
    assert answer.status_code == 200, answer.text
    verdict = answer.json()["verdict"]
    assert (verdict["decision"], verdict["httpStatus"]) == ("deny", 403)
    assert verdict["trace"][0]["policy"] == "no-admin"
    assert verdict["trace"][0]["outcome"] == "won"
    err = error(await live.post(f"{MESH}/explain", json={"path": "/"}), 400, "LUCID_ERR_1201")
    assert "source" in fields(err)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/traffic-policies"),
        ("GET", "/traffic-policies"),
        ("GET", "/traffic-policies/gw-to-chain"),
        ("DELETE", "/security-policies/gw-to-chain"),
        ("PUT", "/circuit-breakers/blockchain-core"),
        ("GET", "/circuit-breakers"),
        ("GET", "/mtls"),
        ("POST", "/explain"),
    ],
)
async def test_service_tokens_get_403(live: httpx.AsyncClient, method: str, path: str) -> None:
    response = await live.request(
        method,
        f"{MESH}{path}",
        json=None if method in ("GET", "DELETE") else {},
        headers=bearer("api-gateway"),
    )
    error(response, 403, "LUCID_ERR_1902")


async def test_openapi_documents_the_mesh_paths(live: httpx.AsyncClient) -> None:
    paths = (await live.get("/api/v1/openapi.json")).json()["paths"]  # relative to /api/v1
    mesh = {p: set(ops) for p, ops in paths.items() if p.startswith("/service-mesh/")}
    assert mesh == {
        "/service-mesh/traffic-policies": {"post", "get"},
        "/service-mesh/traffic-policies/{name}": {"get", "put", "delete"},
        "/service-mesh/security-policies": {"post", "get"},
        "/service-mesh/security-policies/{name}": {"get", "put", "delete"},
        "/service-mesh/circuit-breakers": {"get"},
        "/service-mesh/circuit-breakers/{serviceName}": {"put", "get", "delete"},
        "/service-mesh/mtls": {"put", "get"},
        "/service-mesh/explain": {"post"},
    }
    created = paths["/service-mesh/traffic-policies"]["post"]["responses"]
    assert created.keys() >= {"201", "400", "403", "409"}
