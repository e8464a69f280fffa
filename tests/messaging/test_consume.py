"""The Consume stream: consumers of one service share its queue like a queue group, each
message in flight with one consumer at a time, at most maxInFlight unacked per consumer."""

from __future__ import annotations

import asyncio

import grpc

from lucid_cp.api.lucid.messaging.v1 import delivery_pb2 as dlpb
from lucid_cp.api.lucid.messaging.v1 import messages_pb2 as pb

from .conftest import Queue, message, until
from .fake_consumer import FakeConsumer


async def test_two_consumers_share_the_queue_within_max_in_flight(q: Queue) -> None:
    md = q.md("tron-node")
    a = FakeConsumer(q.stub, "tron-node", md, max_in_flight=2)
    b = FakeConsumer(q.stub, "tron-node", md, max_in_flight=2)
    try:
        await until(lambda: _consumers(q, 2))
        sent = [message() for _ in range(10)]
        for msg in sent:
            await q.send(msg)
        await a.wait(2)
        await b.wait(2)
        ids = [d.message.message_id for d in a.deliveries + b.deliveries]
        # The first four in delivery order, each to one consumer only.
        assert sorted(ids) == sorted(m.message_id for m in sent[:4])
        # Markers: two critical messages, written after both consumers are full, so they come
        # first in delivery order. A wrong extra delivery (beyond a consumer's two slots) taken
        # before them was one of sent[4:] and comes before them on that consumer's stream. One
        # ack frees one slot: that consumer's third delivery must be the marker.
        markers = [message(priority="PRIORITY_CRITICAL") for _ in range(2)]
        for marker in markers:
            await q.send(marker)
        seen: list[str] = []
        for consumer, marker in zip((a, b), markers, strict=True):
            held = next(iter(consumer.unacked.values()))
            seen.append(held.message.message_id)
            consumer.ack(held)
            third = (await consumer.wait(3))[2]
            assert third.message.message_id == marker.message_id
        # Acks free slots; everything is delivered exactly once.
        everything = sent + markers
        while len(seen) < len(everything):
            for consumer in (a, b):
                for delivery in list(consumer.unacked.values()):
                    seen.append(delivery.message.message_id)
                    consumer.ack(delivery)
            await until(lambda: _quiet(a, b, len(everything) - len(seen)))
        assert sorted(seen) == sorted(m.message_id for m in everything)
        assert len(a.deliveries) >= 3 and len(b.deliveries) >= 3
        for msg in everything:
            await until(lambda m=msg: q.status_is(m.message_id, pb.MESSAGE_STATE_DELIVERED))
    finally:
        await a.close()
        await b.close()


async def _consumers(q: Queue, n: int) -> bool:
    return q.system.dispatcher.consumers == n


async def _quiet(a: FakeConsumer, b: FakeConsumer, left: int) -> bool:
    """Each consumer holds what it may: min(2, what is left) between them."""
    return len(a.unacked) + len(b.unacked) == min(4, left)


async def test_nack_on_the_stream_redelivers_and_a_bad_message_ends_it(q: Queue) -> None:
    md = q.md("tron-node")
    consumer = FakeConsumer(q.stub, "tron-node", md)
    try:
        msg = message(retryPolicy={"initialDelay": 100})
        await q.send(msg)
        [first] = await consumer.wait(1)
        consumer.nack(first, "busy")
        deliveries = await consumer.wait(2)
        assert deliveries[1].attempt == 2
        consumer.send(pb.ConsumeRequest(start=pb.ConsumeStart(service_name="tron-node")))
        await asyncio.wait_for(consumer.task, 5)
        assert consumer.error is not None
        assert consumer.error.code() == grpc.StatusCode.INVALID_ARGUMENT
        await until(lambda: _consumers(q, 0))
    finally:
        await consumer.close()


async def test_consume_is_for_the_own_service_only(q: Queue) -> None:
    consumer = FakeConsumer(q.stub, "tron-node", q.md("api-gateway"))
    await asyncio.wait_for(consumer.task, 5)
    assert consumer.error is not None
    assert consumer.error.code() == grpc.StatusCode.PERMISSION_DENIED
    admin = FakeConsumer(q.stub, "tron-node", q.admin)
    try:
        await q.send(message())
        await admin.wait(1)
    finally:
        await admin.close()


async def test_first_message_must_be_start(q: Queue) -> None:
    ack = pb.AckMessageRequest(message_id=message().message_id, attempt=1)

    async def requests():  # type: ignore[no-untyped-def]
        yield pb.ConsumeRequest(ack=ack)
        await asyncio.Event().wait()  # keep the request side open

    call = q.stub.Consume(requests(), metadata=q.md("tron-node"))
    try:
        async for _ in call:
            raise AssertionError("no delivery expected")
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
    else:
        raise AssertionError("the stream should have failed")


async def _attempts(q: Queue) -> int:
    """Attempts spent so far on tron-node's messages (claims made)."""
    return sum(e.record.attempt for e in q.system.index.entries())


async def test_a_stalled_reader_is_not_flooded_with_stale_deliveries(q: Queue) -> None:
    # Regression: a slot freed when its delivery's ack deadline passed even if the delivery
    # still waited to be written to the stream (the reader was not reading, the transport was
    # full): the consumer kept claiming, every claim burnt an attempt, and the reader then got
    # a pile of deliveries all past their deadline.
    policy = {"maxAttempts": 10, "initialDelay": 100, "backoffMultiplier": 1.0}
    sent = [message(payload={"n": n, "blob": "x" * 250_000}, retryPolicy=policy) for n in range(30)]
    for msg in sent:
        await q.send(msg)
    stall = asyncio.Event()

    async def requests():  # type: ignore[no-untyped-def]
        start = pb.ConsumeStart(service_name="tron-node", max_in_flight=1, ack_wait_ms=100)
        yield pb.ConsumeRequest(start=start)
        await stall.wait()

    call = q.stub.Consume(requests(), metadata=q.md("tron-node"))
    try:
        # The reader does not read: the transport's buffers fill up within a few MB...
        await asyncio.sleep(3)
        stalled = await _attempts(q)
        # ...after which nothing more is claimed for it: no attempt is burnt while it stalls.
        await asyncio.sleep(1.5)
        assert await _attempts(q) <= stalled + 1
        # It reads again: what the transport held comes first (stale), and the deliveries
        # that waited past their deadline on the server were dropped, not sent.
        stale = 0
        while True:
            response = await asyncio.wait_for(call.read(), 5)
            delivery = response.delivery
            if delivery.ack_deadline.ToNanoseconds() / 1e9 > q.clock.now():
                break  # a fresh one
            stale += 1
        assert stale < stalled
    finally:
        stall.set()
        call.cancel()


async def test_wakeups_are_kept_only_for_services_someone_follows(q: Queue) -> None:
    # Regression: a wakeup counter stayed in memory for every destination ever sent to.
    wakeups = q.system.wakeups
    for n in range(30):
        await q.send(message(destination=f"nobody-{n}"))
    assert wakeups.followed == 0

    async def followed(n: int) -> bool:
        return wakeups.followed == n

    poll = asyncio.create_task(q.pull("tron-node", wait_ms=10_000))
    await until(lambda: followed(1))
    await q.send(message())
    [delivery] = await asyncio.wait_for(poll, 5)
    assert delivery.message.destination == "tron-node"
    assert wakeups.followed == 0
    consumer = FakeConsumer(q.stub, "tron-node", q.md("tron-node"))
    await until(lambda: followed(1))
    await consumer.close()
    await until(lambda: followed(0))
    push = pb.ConsumerConfig(delivery_mode=dlpb.DELIVERY_MODE_PUSH, path="/in")
    request = pb.PutConsumerRequest(service_name="nobody-1", config=push)
    await q.stub.PutConsumer(request, metadata=q.admin)
    await until(lambda: followed(1))
    request.config.delivery_mode = dlpb.DELIVERY_MODE_PULL
    await q.stub.PutConsumer(request, metadata=q.admin)
    await until(lambda: followed(0))
