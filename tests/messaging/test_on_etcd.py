"""The queue on a real etcd with two replicas: a consumer on replica A gets a message sent
through B (and B sees A's ack); when A stops with a delivery unacked, B's sweeper redelivers
it after its ack deadline (A's claim recorded as timed out)."""

from __future__ import annotations

from dataclasses import replace

import grpc
import pytest

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2_grpc
from lucid_cp.api.lucid.messaging.v1 import messages_pb2 as pb
from lucid_cp.api.lucid.messaging.v1 import messages_pb2_grpc
from lucid_cp.app import start_control_plane
from lucid_cp.clock import SystemClock

from .conftest import Queue, message, until, with_messaging
from .fake_consumer import FakeConsumer

pytestmark = pytest.mark.etcd


async def test_two_replicas_share_the_queue_and_redeliver_after_one_stops(fresh_etcd) -> None:
    settings = replace(with_messaging(sweep_interval=0.1), store_url=fresh_etcd.url)
    first = await start_control_plane(settings)
    second = await start_control_plane(settings)
    stopped = False
    try:
        async with (
            grpc.aio.insecure_channel(first.grpc_target) as ch_a,
            grpc.aio.insecure_channel(second.grpc_target) as ch_b,
        ):
            clock = SystemClock()
            a = Queue(
                first,
                messages_pb2_grpc.MessageServiceStub(ch_a),
                discovery_pb2_grpc.DiscoveryServiceStub(ch_a),
                clock,
            )
            b = Queue(
                second,
                messages_pb2_grpc.MessageServiceStub(ch_b),
                discovery_pb2_grpc.DiscoveryServiceStub(ch_b),
                clock,
            )
            consumer = FakeConsumer(a.stub, "tron-node", a.md("tron-node"), ack_wait_ms=800)
            await until(lambda: _has_consumer(a))
            msg = message()
            await b.send(msg)
            [delivery] = await consumer.wait(1)
            assert delivery.message.message_id == msg.message_id and delivery.attempt == 1
            consumer.ack(delivery)
            await until(lambda: b.status_is(msg.message_id, pb.MESSAGE_STATE_DELIVERED))

            # A takes the next one and stops without acking it: B redelivers it.
            held = message(retryPolicy={"initialDelay": 100})
            await b.send(held)
            await consumer.wait(2)
            assert consumer.deliveries[1].message.message_id == held.message_id
            await first.stop(grace=0.2)
            stopped = True
            await consumer.close()
            deliveries = await b.pull(wait_ms=5000)
            assert [d.message.message_id for d in deliveries] == [held.message_id]
            assert deliveries[0].attempt == 2
            status = await b.ack(deliveries[0])
            assert status.status == pb.MESSAGE_STATE_DELIVERED
            timed_out, acked = status.history
            assert timed_out.outcome == pb.ATTEMPT_OUTCOME_TIMED_OUT
            assert timed_out.consumer.startswith("consumer ") and acked.consumer.startswith("pull ")
    finally:
        if not stopped:
            await first.stop(grace=0.2)
        await second.stop(grace=0.2)


async def _has_consumer(q: Queue) -> bool:
    return q.system.dispatcher.consumers == 1


async def test_racing_replicas_hand_each_message_to_one_consumer(fresh_etcd) -> None:
    settings = replace(with_messaging(sweep_interval=0.1), store_url=fresh_etcd.url)
    planes = [await start_control_plane(settings) for _ in range(2)]
    try:
        async with (
            grpc.aio.insecure_channel(planes[0].grpc_target) as ch_a,
            grpc.aio.insecure_channel(planes[1].grpc_target) as ch_b,
        ):
            clock = SystemClock()
            queues = [
                Queue(
                    p,
                    messages_pb2_grpc.MessageServiceStub(ch),
                    discovery_pb2_grpc.DiscoveryServiceStub(ch),
                    clock,
                )
                for p, ch in zip(planes, (ch_a, ch_b), strict=True)
            ]
            consumers = [
                FakeConsumer(q.stub, "tron-node", q.md("tron-node"), max_in_flight=3)
                for q in queues
                for _ in range(2)
            ]
            for q in queues:
                await until(lambda q=q: _consumers(q, 2))
            sent = [message() for _ in range(30)]
            for n, msg in enumerate(sent):
                await queues[n % 2].send(msg)
            acked: list[str] = []

            async def all_acked() -> bool:
                for consumer in consumers:
                    for delivery in list(consumer.unacked.values()):
                        acked.append(delivery.message.message_id)
                        consumer.ack(delivery)
                    assert len(consumer.unacked) <= 3
                return len(acked) >= len(sent)

            await until(all_acked, timeout=15)
            assert sorted(acked) == sorted(m.message_id for m in sent)  # each exactly once
            assert all(d.attempt == 1 for c in consumers for d in c.deliveries)
            assert sum(1 for c in consumers if c.deliveries) >= 3  # the queue was shared
            for msg in sent:
                await until(
                    lambda m=msg: queues[0].status_is(m.message_id, pb.MESSAGE_STATE_DELIVERED)
                )
            for consumer in consumers:
                await consumer.close()
    finally:
        for plane in planes:
            await plane.stop(grace=0.2)


async def _consumers(q: Queue, n: int) -> bool:
    return q.system.dispatcher.consumers == n
