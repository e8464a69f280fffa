"""End to end: HTTP client -> real gateway (uvicorn) -> real control plane (gRPC, memory store).

Every discovery endpoint of the seed with its documented success and error statuses.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from dataclasses import replace
from typing import Any

import httpx
from gw_live import ADMIN, BASE, SETTINGS, bearer, registration, start_stack

from lucid_cp.auth.tokens import Role
from lucid_cp.config import RateLimit

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
WAIT = 5.0


def error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["code"] == code
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["service"] == "lucid-cp"
    assert RFC3339.match(body["timestamp"])
    return dict(body)


async def register(live: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    return await live.post(f"{BASE}/services", json=body, headers=bearer(body["serviceName"]))


async def test_register_answers_201_with_the_seed_shape(live: httpx.AsyncClient) -> None:
    body = registration()
    response = await register(live, body)
    assert response.status_code == 201, response.text
    got = response.json()
    for key in ("serviceId", "serviceName", "cluster", "plane", "endpoint", "version"):
        assert got[key] == body[key]
    assert got["status"] == "registered"
    assert RFC3339.match(got["registeredAt"])
    assert isinstance(got["revision"], int) and got["ttl"] == 300


async def test_duplicate_registration_is_409(live: httpx.AsyncClient) -> None:
    body = registration()
    assert (await register(live, body)).status_code == 201
    err = error(await register(live, body), 409, "LUCID_ERR_1003")
    assert err["details"]["serviceId"] == body["serviceId"]


async def test_validation_errors_are_400_with_field_violations(live: httpx.AsyncClient) -> None:
    body = registration(endpoint={"host": "h.lucid.onion", "port": 0, "protocol": "https"})
    err = error(await register(live, body), 400, "LUCID_ERR_1004")
    fields = [v["field"] for v in err["details"]["fieldViolations"]]
    assert "endpoint.port" in fields  # in the body's own terms, not "registration.endpoint.port"
    short = registration("ab")
    err = error(
        await live.post(f"{BASE}/services", json=short, headers=ADMIN), 400, "LUCID_ERR_1004"
    )
    assert [v["field"] for v in err["details"]["fieldViolations"]] == ["serviceName"]


async def test_unknown_enum_strings_are_invalid_configuration(live: httpx.AsyncClient) -> None:
    """Issue 8: an unknown enum string is a field violation of the system's own invalid-config
    error (1004), not a malformed request (1904), over the body and the query alike."""
    for field, value in (("cluster", "mars"), ("plane", "control")):
        err = error(await register(live, registration(**{field: value})), 400, "LUCID_ERR_1004")
        assert [v["field"] for v in err["details"]["fieldViolations"]] == [field]
    endpoint = {"host": "h.lucid.onion", "port": 1, "protocol": "ftp"}
    err = error(await register(live, registration(endpoint=endpoint)), 400, "LUCID_ERR_1004")
    assert [v["field"] for v in err["details"]["fieldViolations"]] == ["endpoint.protocol"]
    bad = await live.get(f"{BASE}/services?status=sick", headers=ADMIN)
    assert error(bad, 400, "LUCID_ERR_1004")["details"]["fieldViolations"][0]["field"] == "status"


async def test_missing_or_bad_token_is_401(live: httpx.AsyncClient) -> None:
    body = registration()
    error(await live.post(f"{BASE}/services", json=body), 401, "LUCID_ERR_1901")
    bad = {"Authorization": "Bearer not.a.jwt"}
    error(await live.post(f"{BASE}/services", json=body, headers=bad), 401, "LUCID_ERR_1901")
    error(await live.get(f"{BASE}/services"), 401, "LUCID_ERR_1901")


async def test_acting_for_another_service_is_403(live: httpx.AsyncClient) -> None:
    body = registration()
    other = bearer("blockchain-core")
    error(await live.post(f"{BASE}/services", json=body, headers=other), 403, "LUCID_ERR_1902")
    assert (await register(live, body)).status_code == 201
    sid = body["serviceId"]
    error(await live.delete(f"{BASE}/services/{sid}", headers=other), 403, "LUCID_ERR_1902")


async def test_deregister_is_204_then_404(live: httpx.AsyncClient) -> None:
    body = registration()
    await register(live, body)
    url = f"{BASE}/services/{body['serviceId']}"
    response = await live.delete(url, headers=bearer())
    assert response.status_code == 204 and response.content == b""
    error(await live.delete(url, headers=bearer()), 404, "LUCID_ERR_1002")
    error(
        await live.delete(f"{BASE}/services/{uuid.uuid4()}", headers=ADMIN), 404, "LUCID_ERR_1002"
    )


async def test_health_update_is_200_with_health_status(live: httpx.AsyncClient) -> None:
    body = registration()
    await register(live, body)
    url = f"{BASE}/services/{body['serviceId']}/health"
    response = await live.put(
        url, json={"status": "healthy", "responseTime": 12.5}, headers=bearer()
    )
    assert response.status_code == 200, response.text
    health = response.json()
    assert health["status"] == "healthy" and health["responseTime"] == 12.5
    assert RFC3339.match(health["timestamp"])
    assert health["consecutiveSuccesses"] >= 1 and health["consecutiveFailures"] == 0
    missing = f"{BASE}/services/{uuid.uuid4()}/health"
    error(await live.put(missing, json={"status": "healthy"}, headers=ADMIN), 404, "LUCID_ERR_1002")
    bad = await live.put(url, json={"status": "fine"}, headers=bearer())
    error(bad, 400, "LUCID_ERR_1004")


async def test_discover_filters_and_paginates(live: httpx.AsyncClient) -> None:
    bodies = [
        registration("api-gateway"),
        registration("api-gateway"),
        registration("tron-payment", cluster="tron-payment", plane="wallet"),
    ]
    for body in bodies:
        assert (await register(live, body)).status_code == 201
    everything = (await live.get(f"{BASE}/services", headers=ADMIN)).json()
    assert (everything["total"], everything["limit"], everything["offset"]) == (3, 100, 0)
    wallet = (await live.get(f"{BASE}/services?plane=wallet", headers=ADMIN)).json()
    assert [s["serviceName"] for s in wallet["services"]] == ["tron-payment"]
    assert wallet["services"][0]["cluster"] == "tron-payment"
    page = (await live.get(f"{BASE}/services?limit=1&offset=1", headers=ADMIN)).json()
    assert (page["total"], page["limit"], page["offset"], len(page["services"])) == (3, 1, 1, 1)
    empty = (await live.get(f"{BASE}/services?cluster=authentication", headers=ADMIN)).json()
    assert empty["services"] == [] and empty["total"] == 0 and empty["offset"] == 0
    error(await live.get(f"{BASE}/services?limit=0", headers=ADMIN), 400, "LUCID_ERR_1004")
    error(await live.get(f"{BASE}/services?status=sick", headers=ADMIN), 400, "LUCID_ERR_1004")


async def test_resolve_is_200_for_a_healthy_instance_and_404_otherwise(
    live: httpx.AsyncClient,
) -> None:
    body = registration()
    await register(live, body)
    url = f"{BASE}/services/api-gateway/resolve"
    error(await live.get(url, headers=bearer()), 404, "LUCID_ERR_1002")  # health still unknown
    await live.put(
        f"{BASE}/services/{body['serviceId']}/health", json={"status": "healthy"}, headers=bearer()
    )
    response = await live.get(f"{url}?loadBalance=round-robin&version=1.0.0", headers=bearer())
    assert response.status_code == 200, response.text
    endpoint = response.json()
    assert endpoint["host"] == "api-gateway.lucid.onion" and endpoint["port"] == 8080
    assert endpoint["protocol"] == "https" and endpoint["serviceId"] == body["serviceId"]
    error(
        await live.get(f"{BASE}/services/nothing-here/resolve", headers=bearer()),
        404,
        "LUCID_ERR_1002",
    )


async def test_watch_streams_ndjson_events(live: httpx.AsyncClient) -> None:
    first = registration()
    await register(live, first)
    async with live.stream("GET", f"{BASE}/watch?serviceName=api-gateway", headers=ADMIN) as rsp:
        assert rsp.status_code == 200
        assert rsp.headers["content-type"] == "application/x-ndjson"
        lines = rsp.aiter_lines()
        snapshot = json.loads(await asyncio.wait_for(lines.__anext__(), WAIT))
        assert snapshot["type"] == "snapshot"
        assert [i["serviceId"] for i in snapshot["snapshot"]["instances"]] == [first["serviceId"]]
        assert "instance" not in snapshot
        second = registration()
        assert (await register(live, second)).status_code == 201
        added = json.loads(await asyncio.wait_for(lines.__anext__(), WAIT))
        assert added["type"] == "added"
        assert added["instance"]["serviceId"] == second["serviceId"]
        # A change carries only its instance: no (empty) snapshot list, no lease id.
        assert "snapshot" not in added and "instances" not in added
        assert "leaseId" not in added["instance"]
        assert added["revision"] > snapshot["revision"]
    error(await live.get(f"{BASE}/watch"), 401, "LUCID_ERR_1901")


async def test_heartbeat_is_reachable(live: httpx.AsyncClient) -> None:
    body = registration()
    await register(live, body)
    url = f"{BASE}/services/{body['serviceId']}/heartbeat"
    response = await live.post(url, json={"activeConnections": 3}, headers=bearer())
    assert response.status_code == 200, response.text
    assert response.json()["ttl"] == 300


async def test_rate_limit_is_429_with_retry_after() -> None:
    settings = replace(SETTINGS, rate_limits={"discovery": RateLimit(2)})
    stack = await start_stack(settings)
    try:
        async with httpx.AsyncClient(base_url=stack.gateway.url) as live:
            auth = bearer("ops-admin", Role.ADMIN)
            statuses = [
                (await live.get(f"{BASE}/services", headers=auth)).status_code for _ in range(2)
            ]
            assert statuses == [200, 200]
            limited = await live.get(f"{BASE}/services", headers=auth)
            err = error(limited, 429, "LUCID_ERR_1903")
            assert int(limited.headers["retry-after"]) >= 1
            assert err["details"]["retryAfterSeconds"] > 0
    finally:
        await stack.stop()


async def test_request_id_reaches_the_control_plane(live: httpx.AsyncClient) -> None:
    given = str(uuid.uuid4())
    response = await live.get(
        f"{BASE}/services/nothing-here/resolve", headers={**bearer(), "X-Request-ID": given}
    )
    assert error(response, 404, "LUCID_ERR_1002")["request_id"] == given


async def test_readyz_follows_the_backend(live: httpx.AsyncClient) -> None:
    assert (await live.get("/readyz")).status_code == 200
    assert (await live.get("/healthz")).status_code == 200
