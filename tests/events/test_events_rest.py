"""The event stream over REST: HTTP client -> real gateway -> real control plane. Publish (202),
subscribe, get, list, pull, ack, delete, the NDJSON stream from the cursor then live events, and
the error statuses (400, 403, 404, 409, the retention gap)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import pytest

from lucid_cp.events.module import EventSettings, EventSystem
from tests.gateway.gw_live import ADMIN, SETTINGS, Stack, bearer, start_stack

EVENTS = "/api/v1/inter-service/events"
GW = bearer("api-gateway")


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    settings = replace(
        SETTINGS,
        sections=(*SETTINGS.sections, EventSettings(retention_count=3, retention_interval=3600)),
    )
    s = await start_stack(settings)
    try:
        yield s
    finally:
        await s.stop()


@pytest.fixture
async def live(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.gateway.url, timeout=10.0, headers=GW) as http:
        yield http


def event(event_type: str = "session.created", **over: Any) -> dict[str, Any]:
    return {
        "eventId": str(uuid.uuid4()),
        "eventType": event_type,
        "source": "api-gateway",
        "data": {"user": "u1"},
    } | over


def error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()["error"]
    assert body["code"] == code, body
    return body


async def test_publish_is_202_and_idempotent_then_409(live: httpx.AsyncClient) -> None:
    body = event()
    first = await live.post(EVENTS, json=body)
    assert first.status_code == 202, first.text
    answer = first.json()
    assert answer["eventId"] == body["eventId"] and answer["sequence"] == 1
    assert isinstance(answer["revision"], int) and answer["acceptedAt"].endswith("Z")
    again = await live.post(EVENTS, json=body)
    assert again.status_code == 202 and again.json() == answer
    err = error(
        await live.post(EVENTS, json=body | {"data": {"user": "u2"}}), 409, "LUCID_ERR_1908"
    )
    assert err["details"]["eventId"] == body["eventId"]


async def test_bad_input_is_400_with_field_violations(live: httpx.AsyncClient) -> None:
    err = error(await live.post(EVENTS, json=event("Bad Type")), 400, "LUCID_ERR_1302")
    assert "eventType" in [v["field"] for v in err["details"]["fieldViolations"]]
    big = event(data={"blob": "x" * 70_000})
    err = error(await live.post(EVENTS, json=big), 400, "LUCID_ERR_1302")
    assert "data" in [v["field"] for v in err["details"]["fieldViolations"]]
    err = error(
        await live.post(f"{EVENTS}/subscribe", json={"eventTypes": ["a.>.b"]}),
        400,
        "LUCID_ERR_1302",
    )
    assert "eventTypes[0]" in [v["field"] for v in err["details"]["fieldViolations"]]
    err = error(
        await live.post(
            f"{EVENTS}/subscribe", json={"eventTypes": ["a"], "deliveryMode": "carrier-pigeon"}
        ),
        400,
        "LUCID_ERR_1302",
    )
    error(await live.post(EVENTS, json=event(source="wallet-api")), 403, "LUCID_ERR_1902")


async def test_subscription_lifecycle_pull_and_ack(live: httpx.AsyncClient) -> None:
    created = await live.post(
        f"{EVENTS}/subscribe", json={"eventTypes": ["session.*"], "deliveryMode": "pull"}
    )
    assert created.status_code == 200, created.text
    sub = created.json()
    sid = sub["subscriptionId"]
    assert sub["subscription"]["subscriberId"] == "api-gateway"
    assert sub["subscription"]["deliveryMode"] == "pull"
    assert sub["subscription"]["pushPath"] == "/lucid/events"
    assert sub["cursor"] == 0 and sub["head"] == 0
    for t in ("session.created", "payment.settled", "session.deleted"):
        assert (await live.post(EVENTS, json=event(t))).status_code == 202
    pulled = await live.post(f"{EVENTS}/subscriptions/{sid}/pull", json={"maxEvents": 10})
    assert pulled.status_code == 200, pulled.text
    batch = pulled.json()
    assert [e["eventType"] for e in batch["events"]] == ["session.created", "session.deleted"]
    assert batch["cursor"] == 3 and batch["more"] is False
    assert batch["events"][0]["data"] == {"user": "u1"}
    acked = await live.post(f"{EVENTS}/subscriptions/{sid}/ack", json={"cursor": 3})
    assert acked.status_code == 200 and acked.json()["cursor"] == 3
    error(
        await live.post(f"{EVENTS}/subscriptions/{sid}/ack", json={"cursor": 4}),
        400,
        "LUCID_ERR_1302",
    )
    got = await live.get(f"{EVENTS}/subscriptions/{sid}")
    assert got.status_code == 200 and got.json()["cursor"] == 3
    listed = await live.get(f"{EVENTS}/subscriptions")
    assert listed.status_code == 200 and listed.json()["total"] == 1
    other = bearer("wallet-api")
    error(await live.get(f"{EVENTS}/subscriptions/{sid}", headers=other), 404, "LUCID_ERR_1907")
    assert (await live.get(f"{EVENTS}/subscriptions/{sid}", headers=ADMIN)).status_code == 200
    deleted = await live.delete(f"{EVENTS}/subscriptions/{sid}")
    assert deleted.status_code == 200
    error(await live.get(f"{EVENTS}/subscriptions/{sid}"), 404, "LUCID_ERR_1907")


async def test_ndjson_stream_from_the_cursor_then_live(live: httpx.AsyncClient) -> None:
    sub = (
        await live.post(
            f"{EVENTS}/subscribe",
            json={"eventTypes": ["session.>"], "deliveryMode": "pull", "fromBeginning": True},
        )
    ).json()
    for i in range(2):
        await live.post(EVENTS, json=event(data={"i": i}))
    url = f"{EVENTS}/subscriptions/{sub['subscriptionId']}/stream"
    async with live.stream("GET", url) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = response.aiter_lines()
        backlog = [json.loads(await asyncio.wait_for(anext(lines), 5)) for _ in range(2)]
        assert [e["data"]["i"] for e in backlog] == [0, 1]
        assert [e["sequence"] for e in backlog] == [1, 2]
        await live.post(EVENTS, json=event("payment.settled"))
        await live.post(EVENTS, json=event("session.user.created", data={"i": 2}))
        new = json.loads(await asyncio.wait_for(anext(lines), 5))
        assert new["sequence"] == 4 and new["data"] == {"i": 2}


async def test_stream_of_an_unknown_subscription(live: httpx.AsyncClient) -> None:
    url = f"{EVENTS}/subscriptions/{uuid.uuid4()}/stream"
    async with live.stream("GET", url) as response:
        body = (await response.aread()).decode()
    # A stream that fails before its first message is a trailers-only answer (the interceptor
    # holds its headers back briefly), so REST gets a real 404, not a 200 with an error line.
    assert response.status_code == 404
    assert json.loads(body)["error"]["code"] == "LUCID_ERR_1907"


async def test_the_retention_gap_is_400_with_lost_and_resume_cursor(
    live: httpx.AsyncClient, stack: Stack
) -> None:
    sub = (
        await live.post(
            f"{EVENTS}/subscribe",
            json={"eventTypes": [">"], "deliveryMode": "pull", "fromBeginning": True},
        )
    ).json()
    for _ in range(10):
        await live.post(EVENTS, json=event())
    assert await stack.plane.system(EventSystem).sweeper.sweep() == 7
    sid = sub["subscriptionId"]
    err = error(
        await live.post(f"{EVENTS}/subscriptions/{sid}/pull", json={}), 400, "LUCID_ERR_1302"
    )
    assert err["details"]["lost"] == 7 and err["details"]["resumeCursor"] == 7
    await live.post(f"{EVENTS}/subscriptions/{sid}/ack", json={"cursor": 7})
    batch = (await live.post(f"{EVENTS}/subscriptions/{sid}/pull", json={"maxEvents": 5})).json()
    assert [e["sequence"] for e in batch["events"]] == [8, 9, 10]


async def test_openapi_documents_the_event_paths(live: httpx.AsyncClient) -> None:
    doc = (await live.get("/api/v1/openapi.json")).json()
    paths = doc["paths"]
    for path in (
        "/inter-service/events",
        "/inter-service/events/subscribe",
        "/inter-service/events/subscriptions",
        "/inter-service/events/subscriptions/{subscriptionId}",
        "/inter-service/events/subscriptions/{subscriptionId}/stream",
        "/inter-service/events/subscriptions/{subscriptionId}/pull",
        "/inter-service/events/subscriptions/{subscriptionId}/ack",
    ):
        assert path in paths or f"/api/v1{path}" in paths, sorted(paths)
