"""Push delivery to real HTTP receivers on 127.0.0.1: 2xx delivers, 503 is retried after the
backoff, 400 fails at once (dead-lettered), a slow receiver times out and is retried, no
healthy instance is a failed attempt, instances take turns, maxInFlight bounds the pushes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as dpb
from lucid_cp.api.lucid.messaging.v1 import delivery_pb2 as dlpb
from lucid_cp.api.lucid.messaging.v1 import messages_pb2 as pb
from tests.discovery.conftest import registration

from .conftest import Queue, message, open_queue, until, with_messaging
from .receiver import Receiver

FAST_RETRY = {"initialDelay": 100, "maxDelay": 1000}


@pytest.fixture
async def pq() -> AsyncIterator[Queue]:
    # Sweeps are rare here: a push's own timeout, not the sweeper, ends a slow attempt.
    async for queue in open_queue(with_messaging(sweep_interval=30)):
        yield queue


async def instance(q: Queue, receiver: Receiver, service: str = "tron-node") -> str:
    reg = registration(service)
    reg.endpoint.host = "127.0.0.1"
    reg.endpoint.port = receiver.port
    reg.endpoint.protocol = dpb.PROTOCOL_HTTP
    md = q.md(service)
    await q.discovery.Register(dpb.RegisterRequest(registration=reg), metadata=md)
    update = dpb.HealthUpdate(status=dpb.HEALTH_STATE_HEALTHY)
    await q.discovery.UpdateHealth(
        dpb.UpdateHealthRequest(service_id=reg.service_id, update=update), metadata=md
    )
    return reg.service_id


async def push_mode(q: Queue, service: str = "tron-node", **config: int) -> None:
    settings = pb.ConsumerConfig(
        delivery_mode=dlpb.DELIVERY_MODE_PUSH, path="/lucid/inbox", ack_wait_ms=500
    )
    for name, value in config.items():
        setattr(settings, name, value)
    await q.stub.PutConsumer(
        pb.PutConsumerRequest(service_name=service, config=settings), metadata=q.md(service)
    )


async def settled(q: Queue, message_id: str) -> pb.MessageStatus:
    async def final() -> pb.MessageStatus | None:
        status = await q.status(message_id)
        return (
            status
            if status.status in (pb.MESSAGE_STATE_DELIVERED, pb.MESSAGE_STATE_FAILED)
            else None
        )

    return await until(final)


async def test_a_2xx_delivers_the_message_as_json(pq: Queue) -> None:
    receiver = await Receiver((202, 0.0)).start()
    try:
        sid = await instance(pq, receiver)
        await push_mode(pq)
        msg = message(priority="PRIORITY_HIGH", headers={"trace": "t-1"})
        await pq.send(msg)
        status = await settled(pq, msg.message_id)
        assert status.status == pb.MESSAGE_STATE_DELIVERED
        assert status.delivered_to == f"instance {sid}" and status.attempts == 1
        assert [a.outcome for a in status.history] == [pb.ATTEMPT_OUTCOME_PUSHED]
        [got] = receiver.received
        assert got.path == "/lucid/inbox"
        assert got.headers["x-lucid-message-id"] == msg.message_id
        assert got.headers["x-lucid-attempt"] == "1"
        assert got.headers["content-type"] == "application/json"
        assert got.body["messageId"] == msg.message_id
        assert got.body["priority"] == "high"  # the REST wire string
        assert got.body["payload"] == {"op": "transfer", "amount": 5}
        assert got.body["headers"] == {"trace": "t-1"} and got.body["ttl"] == 3600
    finally:
        await receiver.stop()


async def test_a_503_is_retried_after_the_backoff(pq: Queue) -> None:
    receiver = await Receiver((503, 0.0), (200, 0.0)).start()
    try:
        await instance(pq, receiver)
        await push_mode(pq)
        msg = message(retryPolicy=FAST_RETRY)
        await pq.send(msg)
        status = await settled(pq, msg.message_id)
        assert status.status == pb.MESSAGE_STATE_DELIVERED and status.attempts == 2
        assert [(a.outcome, a.error) for a in status.history] == [
            (pb.ATTEMPT_OUTCOME_PUSH_FAILED, "HTTP 503"),
            (pb.ATTEMPT_OUTCOME_PUSHED, ""),
        ]
        gap = (
            status.history[1].started_at.ToNanoseconds()
            - status.history[0].ended_at.ToNanoseconds()
        )
        assert gap >= 100 * 10**6  # the 100 ms backoff
        assert [r.headers["x-lucid-attempt"] for r in receiver.received] == ["1", "2"]
    finally:
        await receiver.stop()


async def test_a_400_fails_at_once_and_is_dead_lettered(pq: Queue) -> None:
    receiver = await Receiver((400, 0.0)).start()
    try:
        await instance(pq, receiver)
        await push_mode(pq)
        msg = message(retryPolicy=FAST_RETRY)
        await pq.send(msg)
        status = await settled(pq, msg.message_id)
        assert status.status == pb.MESSAGE_STATE_FAILED and status.dead_lettered
        assert [(a.outcome, a.error) for a in status.history] == [
            (pb.ATTEMPT_OUTCOME_PUSH_REFUSED, "HTTP 400")
        ]
        assert len(receiver.received) == 1
    finally:
        await receiver.stop()


async def test_a_slow_receiver_times_out_and_is_retried(pq: Queue) -> None:
    receiver = await Receiver((200, 2.0), (200, 0.0)).start()
    try:
        await instance(pq, receiver)
        await push_mode(pq, ack_wait_ms=300)
        msg = message(retryPolicy=FAST_RETRY)
        await pq.send(msg)
        status = await settled(pq, msg.message_id)
        assert status.status == pb.MESSAGE_STATE_DELIVERED and status.attempts == 2
        first = status.history[0]
        assert first.outcome == pb.ATTEMPT_OUTCOME_PUSH_FAILED and "timed out" in first.error
    finally:
        await receiver.stop()


async def test_no_healthy_instance_is_a_failed_attempt(pq: Queue) -> None:
    await push_mode(pq, service="ledger-svc")
    msg = message(destination="ledger-svc", retryPolicy=FAST_RETRY | {"maxAttempts": 2})
    await pq.send(msg)
    status = await settled(pq, msg.message_id)
    assert status.status == pb.MESSAGE_STATE_FAILED and status.dead_lettered
    assert [a.outcome for a in status.history] == [pb.ATTEMPT_OUTCOME_NO_INSTANCE] * 2


async def test_instances_take_turns_and_max_in_flight_bounds_the_pushes(pq: Queue) -> None:
    receivers = [await Receiver((200, 0.2)).start() for _ in range(2)]
    try:
        for receiver in receivers:
            await instance(pq, receiver)
        await push_mode(pq, max_in_flight=2)
        sent = [message() for _ in range(6)]
        for msg in sent:
            await pq.send(msg)
        for msg in sent:
            assert (await settled(pq, msg.message_id)).status == pb.MESSAGE_STATE_DELIVERED
        assert [len(r.received) for r in receivers] == [3, 3]
        assert sum(r.most_in_flight for r in receivers) <= 2
    finally:
        for receiver in receivers:
            await receiver.stop()


class _FailingOnce:
    """Discovery's index, failing its first read (a bug, a bad record)."""

    def __init__(self, instances: Any) -> None:
        self._instances = instances
        self.failed = False

    def of_service(self, service_name: str) -> Any:
        if not self.failed:
            self.failed = True
            raise RuntimeError("a bad instance record")
        return self._instances.of_service(service_name)


async def test_a_failure_picking_an_instance_releases_the_message(pq: Queue) -> None:
    # Regression: the reservation was kept: the message was never pushed again by this replica.
    receiver = await Receiver((200, 0.0)).start()
    try:
        await instance(pq, receiver)
        pusher = pq.system.pusher
        failing = pusher._instances = _FailingOnce(pusher._instances)
        await push_mode(pq)
        msg = message()
        await pq.send(msg)
        status = await settled(pq, msg.message_id)
        assert failing.failed
        assert status.status == pb.MESSAGE_STATE_DELIVERED and status.attempts == 1
    finally:
        await receiver.stop()
