"""Batches: SendMessages (gRPC and REST), Consume with maxBatch, and acks in one stream
message. Each message in a batch is treated as if it came alone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import grpc
import httpx
import pytest

from lucid_cp.api.lucid.messaging.v1 import messages_pb2 as pb
from lucid_cp.config import RateLimit
from tests.gateway.gw_live import Stack, bearer, start_stack

from .conftest import SETTINGS, Queue, message, open_queue, until
from .fake_consumer import FakeConsumer
from .test_rest import BASE, GW, body, error, fields


async def send_many(q: Queue, messages: list[pb.InterServiceMessage], as_: str = "api-gateway"):  # type: ignore[no-untyped-def]
    return await q.stub.SendMessages(pb.SendMessagesRequest(messages=messages), metadata=q.md(as_))


async def test_a_batch_is_stored_and_answered_message_by_message(q: Queue) -> None:
    first = message()
    await q.send(first)
    clash = message()
    await q.send(clash)
    changed = pb.InterServiceMessage()
    changed.CopyFrom(clash)
    changed.ttl = 60
    fresh = [message(priority="PRIORITY_HIGH") for _ in range(20)]
    answer = await send_many(q, [first, *fresh, changed])
    assert [r.message_id for r in answer.results] == [
        m.message_id for m in [first, *fresh, changed]
    ]
    again, *new, conflict = answer.results
    assert again.accepted.status == pb.MESSAGE_STATE_QUEUED and not again.code
    assert all(r.HasField("accepted") and not r.code for r in new)
    assert len({r.accepted.revision for r in new}) < len(new)  # they shared store txns
    assert not conflict.HasField("accepted")
    assert conflict.code == "LUCID_ERR_1908" and clash.message_id in conflict.error
    stored = await q.status(clash.message_id)
    assert stored.expires_at.seconds - stored.queued_at.seconds == 3600  # untouched
    for m in fresh:
        assert (await q.status(m.message_id)).priority == pb.PRIORITY_HIGH
    writes = q.system.queue.writes
    assert writes.members > writes.txns  # group commit joined some


async def test_a_batch_with_one_bad_message_stores_nothing(q: Queue) -> None:
    good = message()
    foreign = message(source="tron-node")
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await send_many(q, [good, foreign])
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    bad = message(ttl=0)
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await send_many(q, [good, bad])
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "messages[1].ttl" in (invalid.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await send_many(q, [])
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await q.status(good.message_id)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(q.system.index) == 0


async def test_consume_batches_and_acks_in_one_message(q: Queue) -> None:
    sent = [message() for _ in range(30)]
    await send_many(q, sent)
    consumer = FakeConsumer(q.stub, "tron-node", q.md("tron-node"), max_in_flight=50, max_batch=8)
    try:
        await consumer.wait(30)
        assert sorted(d.message.message_id for d in consumer.deliveries) == sorted(
            m.message_id for m in sent
        )
        # Every response used `deliveries`, at most 8 each, and the queued ones came together.
        assert all(not r.HasField("delivery") for r in consumer.responses)
        assert max(len(r.deliveries) for r in consumer.responses) > 1
        assert all(len(r.deliveries) <= 8 for r in consumer.responses)
        consumer.ack_all(consumer.deliveries)
        for m in sent:
            await until(lambda m=m: q.status_is(m.message_id, pb.MESSAGE_STATE_DELIVERED))
    finally:
        await consumer.close()


async def test_without_max_batch_each_response_carries_one_delivery(q: Queue) -> None:
    await send_many(q, [message() for _ in range(5)])
    consumer = FakeConsumer(q.stub, "tron-node", q.md("tron-node"), max_in_flight=10)
    try:
        await consumer.wait(5)
        assert all(r.HasField("delivery") and not r.deliveries for r in consumer.responses)
    finally:
        await consumer.close()


async def test_an_empty_ack_batch_ends_the_stream(q: Queue) -> None:
    consumer = FakeConsumer(q.stub, "tron-node", q.md("tron-node"), max_batch=4)
    try:
        consumer.send(pb.ConsumeRequest(acks=pb.AckBatch()))
        await until(lambda: _done(consumer))
        assert consumer.error is not None
        assert consumer.error.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await consumer.close()


async def _done(consumer: FakeConsumer) -> bool:
    return consumer.task.done()


@pytest.fixture
async def live() -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
    stack = await start_stack()
    try:
        async with httpx.AsyncClient(base_url=stack.gateway.url, timeout=10.0) as http:
            yield stack, http
    finally:
        await stack.stop()


async def test_send_a_batch_over_rest(live: tuple[Stack, httpx.AsyncClient]) -> None:
    _, http = live
    msgs = [body(), body(priority="critical")]
    sent = await http.post(f"{BASE}/messages/batch", json={"messages": msgs}, headers=GW)
    assert sent.status_code == 202, sent.text
    results = sent.json()["results"]
    assert [r["messageId"] for r in results] == [m["messageId"] for m in msgs]
    assert all(r["accepted"]["status"] == "queued" for r in results)
    status = await http.get(f"{BASE}/messages/{msgs[1]['messageId']}/status", headers=GW)
    assert status.json()["priority"] == "critical"
    err = error(
        await http.post(
            f"{BASE}/messages/batch", json={"messages": [body(), body(ttl=0)]}, headers=GW
        ),
        400,
        "LUCID_ERR_1301",
    )
    assert fields(err) == ["messages[1].ttl"]
    error(
        await http.post(
            f"{BASE}/messages/batch",
            json={"messages": [body(source="tron-node")]},
            headers=bearer("api-gateway"),
        ),
        403,
        "LUCID_ERR_1902",
    )


async def publish(
    q: Queue, messages: list[pb.InterServiceMessage], as_: str = "api-gateway"
) -> tuple[list[pb.SendResult], grpc.aio.AioRpcError | None]:
    """Publishes ``messages`` on one PublishMessages stream; its answers and its error."""

    async def requests():  # type: ignore[no-untyped-def]
        for m in messages:
            yield pb.SendMessageRequest(message=m)

    call = q.stub.PublishMessages(requests(), metadata=q.md(as_))
    answers: list[pb.SendResult] = []
    try:
        async for answer in call:
            answers.append(answer)
    except grpc.aio.AioRpcError as exc:
        return answers, exc
    return answers, None


async def test_publish_pipelines_sends_on_one_stream(q: Queue) -> None:
    clash = message()
    await q.send(clash)
    changed = pb.InterServiceMessage()
    changed.CopyFrom(clash)
    changed.ttl = 60
    fresh = [message() for _ in range(40)]
    answers, error = await publish(q, [*fresh[:20], changed, *fresh[20:]])
    assert error is None
    by_id = {a.message_id: a for a in answers}
    assert len(answers) == 41 and len(by_id) == 41
    assert all(by_id[m.message_id].accepted.status == pb.MESSAGE_STATE_QUEUED for m in fresh)
    assert by_id[clash.message_id].code == "LUCID_ERR_1908"
    for m in fresh:
        assert (await q.status(m.message_id)).status == pb.MESSAGE_STATE_QUEUED
    assert (await q.status(clash.message_id)).expires_at.seconds - (
        await q.status(clash.message_id)
    ).queued_at.seconds == 3600


async def test_publish_ends_at_an_invalid_or_foreign_message(q: Queue) -> None:
    good = [message(), message()]
    bad = message(ttl=0)
    answers, error = await publish(q, [*good, bad, message()])
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ttl" in (error.details() or "")
    assert sorted(a.message_id for a in answers) == sorted(m.message_id for m in good)
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await q.status(bad.message_id)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    answers, error = await publish(q, [message(), message(source="tron-node")])
    assert error is not None and error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert len(answers) == 1


async def test_batches_and_publish_streams_take_a_token_per_message() -> None:
    settings = replace(SETTINGS, rate_limits_enabled=True, rate_limits={"messages": RateLimit(10)})
    async for q in open_queue(settings):
        answer = await send_many(q, [message() for _ in range(6)])  # 6 of 10
        assert len(answer.results) == 6
        over = [message() for _ in range(5)]  # 5 > the 4 left: all refused, nothing stored
        with pytest.raises(grpc.aio.AioRpcError) as limited:
            await send_many(q, over)
        assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert len(q.system.index) == 6
        # A stream: one token to open, one per message; 3 left, so 2 messages get through.
        answers, error = await publish(q, [message() for _ in range(4)])
        assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert len(answers) == 2 and len(q.system.index) == 8
