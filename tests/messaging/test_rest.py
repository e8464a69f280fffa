"""The message queue over REST: HTTP client -> real gateway -> real control plane. Send (202),
long-poll pull, ack, nack, status, dead letters and replay, consumer configuration; the seed's
error shape for 400, 403, 404 and 409."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format

from lucid_cp.api.lucid.messaging.v1 import messages_pb2 as pb
from lucid_cp.api.lucid.messaging.v1 import messages_pb2_grpc
from lucid_cp.messaging.module import MessagingSystem
from tests.gateway.gw_live import ADMIN, Stack, bearer, start_stack

BASE = "/api/v1/inter-service"
GW, NODE = bearer("api-gateway"), bearer("tron-node")


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    started = await start_stack()
    try:
        yield started
    finally:
        await started.stop()


@pytest.fixture
async def live(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.gateway.url, timeout=10.0) as http:
        yield http


def body(**over: Any) -> dict[str, Any]:
    return {
        "messageId": str(uuid.uuid4()),
        "source": "api-gateway",
        "destination": "tron-node",
        "payload": {"op": "transfer", "amount": 5},
        "priority": "high",
    } | over


def error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    err: dict[str, Any] = response.json()["error"]
    assert err["code"] == code, err
    return err


def fields(err: dict[str, Any]) -> list[str]:
    return [v["field"] for v in err["details"]["fieldViolations"]]


async def test_send_long_poll_ack_and_status(stack: Stack, live: httpx.AsyncClient) -> None:
    empty = await live.post(f"{BASE}/queues/tron-node/pull", json={}, headers=NODE)
    assert empty.status_code == 200 and empty.json() == {"deliveries": []}
    wakeups = stack.plane.system(MessagingSystem).wakeups
    assert wakeups.followed == 0
    poll = asyncio.create_task(
        live.post(
            f"{BASE}/queues/tron-node/pull", json={"maxMessages": 5, "waitMs": 5000}, headers=NODE
        )
    )
    # The synchronisation point: a long poll follows its service's wakeups while it waits (it
    # found nothing and looks again on the next wakeup), so the message below is sent after
    # the poll reached the server and waits, however slow the runner.
    async with asyncio.timeout(5):
        while wakeups.followed != 1:  # noqa: ASYNC110 (state the server task writes)
            await asyncio.sleep(0.01)
    assert not poll.done()
    msg = body()
    sent = await live.post(f"{BASE}/messages", json=msg, headers=GW)
    assert sent.status_code == 202, sent.text
    answer = sent.json()
    assert answer["messageId"] == msg["messageId"] and answer["status"] == "queued"
    assert isinstance(answer["revision"], int) and answer["expiresAt"] > answer["queuedAt"]
    pulled = (await asyncio.wait_for(poll, 5)).json()["deliveries"]
    assert len(pulled) == 1
    [delivery] = pulled
    assert delivery["attempt"] == 1 and delivery["message"]["priority"] == "high"
    assert delivery["message"]["payload"] == msg["payload"] and "ackDeadline" in delivery
    status = await live.get(f"{BASE}/messages/{msg['messageId']}/status", headers=GW)
    assert status.json()["status"] == "processing"
    acked = await live.post(
        f"{BASE}/messages/{msg['messageId']}/ack", json={"attempt": 1}, headers=NODE
    )
    assert acked.status_code == 200, acked.text
    assert acked.json()["status"] == "delivered"
    status = (await live.get(f"{BASE}/messages/{msg['messageId']}/status", headers=GW)).json()
    assert status["status"] == "delivered" and status["deliveredTo"].startswith("pull ")
    assert status["history"][0]["outcome"] == "acked" and status["processingTime"] >= 0
    # The same id again: the first answer; other content: 409.
    again = await live.post(f"{BASE}/messages", json=msg, headers=GW)
    assert again.status_code == 202 and again.json() == answer
    other = await live.post(f"{BASE}/messages", json=msg | {"ttl": 60}, headers=GW)
    error(other, 409, "LUCID_ERR_1908")


async def test_nack_dead_letter_and_replay(live: httpx.AsyncClient) -> None:
    msg = body()
    assert (await live.post(f"{BASE}/messages", json=msg, headers=GW)).status_code == 202
    [delivery] = (await live.post(f"{BASE}/queues/tron-node/pull", json={}, headers=NODE)).json()[
        "deliveries"
    ]
    nacked = await live.post(
        f"{BASE}/messages/{msg['messageId']}/nack",
        json={"attempt": delivery["attempt"], "error": "poison", "retryable": False},
        headers=NODE,
    )
    assert nacked.json()["status"] == "failed" and nacked.json()["deadLettered"] is True
    dead = (await live.get(f"{BASE}/dead-letters?destination=tron-node", headers=NODE)).json()
    assert dead["total"] == 1
    assert dead["deadLetters"][0]["status"]["history"][0]["error"] == "poison"
    error(
        await live.get(f"{BASE}/dead-letters?destination=tron-node", headers=GW),
        403,
        "LUCID_ERR_1902",
    )
    replayed = await live.post(
        f"{BASE}/dead-letters/{msg['messageId']}/replay", json={}, headers=ADMIN
    )
    assert replayed.status_code == 200 and replayed.json()["status"] == "queued"
    [again] = (await live.post(f"{BASE}/queues/tron-node/pull", json={}, headers=NODE)).json()[
        "deliveries"
    ]
    assert again["attempt"] == 1
    stale = await live.post(
        f"{BASE}/messages/{msg['messageId']}/ack", json={"attempt": 2}, headers=NODE
    )
    error(stale, 409, "LUCID_ERR_1905")


async def test_errors(live: httpx.AsyncClient) -> None:
    outsider = bearer("wallet-svc")
    msg = body()
    await live.post(f"{BASE}/messages", json=msg, headers=GW)
    error(
        await live.get(f"{BASE}/messages/{msg['messageId']}/status", headers=outsider),
        404,
        "LUCID_ERR_1907",
    )
    error(
        await live.post(f"{BASE}/messages", json=body(source="tron-node"), headers=GW),
        403,
        "LUCID_ERR_1902",
    )
    error(
        await live.post(f"{BASE}/queues/tron-node/pull", json={}, headers=GW), 403, "LUCID_ERR_1902"
    )
    for bad, field in (
        (body(ttl=0), "ttl"),
        (body(ttl=86401), "ttl"),
        (body(priority="urgent"), "priority"),
        (body(payload={"blob": "x" * 262144}), "payload"),
    ):
        err = error(
            await live.post(f"{BASE}/messages", json=bad, headers=GW), 400, "LUCID_ERR_1301"
        )
        assert field in fields(err), err
        missing = await live.get(f"{BASE}/messages/{bad['messageId']}/status", headers=GW)
        assert missing.status_code == 404
    err = error(
        await live.put(f"{BASE}/consumers/tron-node", json={"deliveryMode": "fax"}, headers=NODE),
        400,
        "LUCID_ERR_1301",
    )
    assert fields(err) == ["deliveryMode"]
    err = error(
        await live.put(f"{BASE}/consumers/tron-node", json={"deliveryMode": "push"}, headers=NODE),
        400,
        "LUCID_ERR_1301",
    )
    assert fields(err) == ["path"]
    put = await live.put(
        f"{BASE}/consumers/tron-node",
        json={"deliveryMode": "pull", "maxInFlight": 5, "ackWaitMs": 1000},
        headers=NODE,
    )
    assert put.status_code == 200 and put.json()["config"]["deliveryMode"] == "pull"
    got = (await live.get(f"{BASE}/consumers/tron-node", headers=NODE)).json()
    assert got["config"]["maxInFlight"] == 5 and got["revision"] == put.json()["revision"]


async def test_a_resend_over_rest_and_grpc_is_the_same_content(
    stack: Stack, live: httpx.AsyncClient
) -> None:
    # Regression: the digest was taken before the defaults were applied, so a re-send that
    # spelled them out was a 409.
    payload = {"op": "transfer", "amount": 5, "to": ["a", None], "deep": {"x": 1.5}}
    bare = body(priority="normal", payload=payload)
    spelled = bare | {"ttl": 3600, "retryPolicy": {"maxAttempts": 3, "backoffMultiplier": 2}}
    metadata = (("authorization", GW["Authorization"]),)

    def first_answer(answer: dict[str, Any]) -> tuple[str, int, str]:
        return answer["messageId"], int(answer["revision"]), answer["queuedAt"]

    async with grpc.aio.insecure_channel(stack.plane.grpc_target) as channel:
        stub = messages_pb2_grpc.MessageServiceStub(channel)

        async def over_grpc(message: dict[str, Any]) -> tuple[str, int, str]:
            msg = pb.InterServiceMessage()
            json_format.ParseDict(message | {"priority": "PRIORITY_NORMAL"}, msg)
            sent = await stub.SendMessage(pb.SendMessageRequest(message=msg), metadata=metadata)
            return first_answer(json_format.MessageToDict(sent))

        async def over_rest(message: dict[str, Any]) -> tuple[str, int, str]:
            sent = await live.post(f"{BASE}/messages", json=message, headers=GW)
            assert sent.status_code == 202, sent.text
            return first_answer(sent.json())

        for one, two in ((bare, spelled), (spelled, bare)):
            for send_first, send_other in ((over_rest, over_grpc), (over_grpc, over_rest)):
                same = {"messageId": str(uuid.uuid4())}
                answer = await send_first(one | same)
                assert await send_other(one | same) == answer
                assert await send_other(two | same) == answer
                assert await send_first(two | same) == answer
        other = spelled | same | {"retryPolicy": {"maxAttempts": 4}}
        error(await live.post(f"{BASE}/messages", json=other, headers=GW), 409, "LUCID_ERR_1908")
