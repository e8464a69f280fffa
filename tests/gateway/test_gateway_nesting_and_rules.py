"""Issue 8 through REST: real HTTP client -> real gateway -> real control plane. The nesting cap,
the declared consistent-hash rule, GET one instance, oversized tokens; and the OpenAPI document
describing the rule and the new route (generated, with no gateway change)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from gw_live import ADMIN, BASE, bearer, registration
from test_gateway_e2e import WAIT, error, register
from test_gateway_openapi import document, operation, params, schema

from lucid_cp.validation import MAX_STRUCT_DEPTH


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": "x"}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def depth_of(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    return 0


async def test_structs_at_the_limit_round_trip_and_one_over_is_400(live: httpx.AsyncClient) -> None:
    body = registration(metadata=nested(MAX_STRUCT_DEPTH))
    assert (await register(live, body)).status_code == 201
    one = f"{BASE}/services/{body['serviceId']}"
    health = {"status": "healthy", "details": nested(MAX_STRUCT_DEPTH)}
    response = await live.put(f"{one}/health", json=health, headers=bearer())
    assert response.status_code == 200, response.text
    got = (await live.get(one, headers=bearer())).json()
    assert got["metadata"] == body["metadata"] and got["health"]["details"] == health["details"]
    listed = (await live.get(f"{BASE}/services", headers=bearer())).json()
    assert depth_of(listed["services"][0]["health"]["details"]) == MAX_STRUCT_DEPTH
    async with live.stream("GET", f"{BASE}/watch", headers=ADMIN) as rsp:
        line = await asyncio.wait_for(rsp.aiter_lines().__anext__(), WAIT)
        [instance] = json.loads(line)["snapshot"]["instances"]
        assert instance["health"]["details"] == health["details"]

    too_deep = {"status": "healthy", "details": nested(MAX_STRUCT_DEPTH + 1)}
    refused = error(
        await live.put(f"{one}/health", json=too_deep, headers=bearer()), 400, "LUCID_ERR_1004"
    )
    assert (
        refused["details"]["fieldViolations"][0]["field"] == "details"
    )  # REST names fields in the body
    assert (await live.get(one, headers=bearer())).json()["health"]["details"] == health["details"]

    other = registration(metadata=nested(MAX_STRUCT_DEPTH + 1))
    refused = error(await register(live, other), 400, "LUCID_ERR_1004")
    assert refused["details"]["fieldViolations"][0]["field"] == "metadata"
    error(
        await live.get(f"{BASE}/services/{other['serviceId']}", headers=bearer()),
        404,
        "LUCID_ERR_1002",
    )


async def test_get_one_instance(live: httpx.AsyncClient) -> None:
    body = registration()
    created = (await register(live, body)).json()
    url = f"{BASE}/services/{body['serviceId']}"
    response = await live.get(url, headers=bearer())
    assert response.status_code == 200, response.text
    got = response.json()
    assert got["serviceId"] == body["serviceId"] and got["endpoint"] == body["endpoint"]
    assert got["revision"] == created["revision"] and got["activeConnections"] == 0
    assert "leaseId" not in got
    error(
        await live.get(f"{BASE}/services/{registration()['serviceId']}", headers=bearer()),
        404,
        "LUCID_ERR_1002",
    )


async def test_consistent_hash_needs_hash_key_even_with_no_instances(
    live: httpx.AsyncClient,
) -> None:
    url = f"{BASE}/services/nobody-here/resolve"
    response = await live.get(url, params={"loadBalance": "consistent-hash"}, headers=bearer())
    body = error(response, 400, "LUCID_ERR_1004")
    assert body["details"]["fieldViolations"] == [
        {"field": "hashKey", "description": "is required when loadBalance is consistent-hash"}
    ]
    keyed = {"loadBalance": "consistent-hash", "hashKey": "user-1"}
    error(await live.get(url, params=keyed, headers=bearer()), 404, "LUCID_ERR_1002")


async def test_an_oversized_token_is_401_not_429(live: httpx.AsyncClient) -> None:
    headers = {"Authorization": "Bearer " + "A" * 8200}
    response = await live.get(f"{BASE}/services", headers=headers)
    error(response, 401, "LUCID_ERR_1901")
    assert "retry-after" not in response.headers  # a refusal, not a rate limit


def test_openapi_documents_the_cross_field_rule_and_get_one_instance() -> None:
    doc = document()
    resolve = operation(doc, "get", "/service-discovery/services/{serviceName}/resolve")
    rule = {"when": {"field": "loadBalance", "equals": "consistent-hash"}, "require": "hashKey"}
    assert resolve["x-lucid-rules"] == [rule]
    hash_key = params(resolve)["hashKey"]
    assert hash_key["description"] == "Required when loadBalance is consistent-hash."
    assert "required" not in hash_key  # only conditionally
    get_one = operation(doc, "get", "/service-discovery/services/{serviceId}")
    assert get_one["x-grpc-method"] == "lucid.discovery.v1.DiscoveryService.GetInstance"
    assert get_one["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ServiceInstance"
    }
    assert "leaseId" not in schema(doc, "ServiceInstance")["properties"]


def test_openapi_watch_events_carry_one_member() -> None:
    watch = schema(document(), "WatchResponse")
    assert "instances" not in watch["properties"]
    assert {"instance", "snapshot"} <= set(watch["properties"])
