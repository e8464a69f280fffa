"""Direct claims: a message sent while nothing of its destination waits, and a Consume stream
of that service on this replica has room, is written claimed for that stream (one store write
fewer) and handed over once written; never ahead of a message sent before it."""

from __future__ import annotations

import asyncio

from lucid_cp.api.lucid.messaging.v1 import messages_pb2 as pb
from lucid_cp.auth.tokens import Principal, Role

from .conftest import Queue, message, until
from .fake_consumer import FakeConsumer


async def _consumers(q: Queue, n: int) -> bool:
    return q.system.dispatcher.consumers == n


async def test_a_message_sent_to_an_idle_consumer_is_claimed_as_it_is_written(q: Queue) -> None:
    consumer = FakeConsumer(q.stub, "tron-node", q.md("tron-node"), max_in_flight=5)
    try:
        await until(lambda: _consumers(q, 1))
        msg = message()
        txns = q.system.queue.writes.txns
        await q.send(msg)
        status = await q.status(msg.message_id)
        assert status.status == pb.MESSAGE_STATE_PROCESSING and status.attempts == 1
        assert status.history[0].consumer.startswith("consumer ")
        [delivery] = await consumer.wait(1)
        assert delivery.message.message_id == msg.message_id and delivery.attempt == 1
        assert q.system.dispatcher.direct_claims == 1
        consumer.ack(delivery)
        await until(lambda: q.status_is(msg.message_id, pb.MESSAGE_STATE_DELIVERED))
        assert q.system.queue.writes.txns - txns == 2  # the send and the ack: no claim
    finally:
        await consumer.close()


async def test_a_full_consumer_gets_the_queue_in_send_order(q: Queue) -> None:
    consumer = FakeConsumer(q.stub, "tron-node", q.md("tron-node"), max_in_flight=1)
    try:
        await until(lambda: _consumers(q, 1))
        sent = [message() for _ in range(4)]
        for m in sent:  # one after the other (sent together, they share a revision)
            await q.send(m)
        got: list[str] = []
        while len(got) < len(sent):
            deliveries = await consumer.wait(len(got) + 1)
            got.append(deliveries[len(got)].message.message_id)
            consumer.ack(deliveries[len(got) - 1])
        # The first went directly (the consumer had room), the rest were queued: FIFO.
        assert got == [m.message_id for m in sent]
        assert q.system.dispatcher.direct_claims == 1
    finally:
        await consumer.close()


async def test_nothing_is_claimed_directly_while_a_message_waits(q: Queue) -> None:
    consumer = FakeConsumer(q.stub, "tron-node", q.md("tron-node"), max_in_flight=5)
    try:
        await until(lambda: _consumers(q, 1))
        backing_off = message(retryPolicy={"initialDelay": 2000})
        await q.send(backing_off)
        [first] = await consumer.wait(1)
        consumer.nack(first, "later")
        await until(lambda: _waiting(q, 1))  # queued again, in its backoff
        direct = q.system.dispatcher.direct_claims
        later = message()
        await q.send(later)
        deliveries = await consumer.wait(2)
        assert deliveries[1].message.message_id == later.message_id  # by a claim of its own
        assert q.system.dispatcher.direct_claims == direct
    finally:
        await consumer.close()


async def _waiting(q: Queue, n: int) -> bool:
    return q.system.index.waiting("tron-node") == n


async def test_a_resend_gives_the_slot_back(q: Queue) -> None:
    msg = message()
    await q.send(msg)  # queued: nobody consumes yet
    consumer = FakeConsumer(q.stub, "tron-node", q.md("tron-node"), max_in_flight=1)
    try:
        [delivery] = await consumer.wait(1)
        consumer.ack(delivery)
        await until(lambda: q.status_is(msg.message_id, pb.MESSAGE_STATE_DELIVERED))
        await until(lambda: _free(q))
        again = await q.send(msg)  # the same id: the first answer, no new claim
        assert again.status == pb.MESSAGE_STATE_QUEUED
        assert q.system.dispatcher.direct_claims == 0
        await until(lambda: _free(q))  # its reserved slot was given back
        fresh = message()
        await q.send(fresh)
        deliveries = await consumer.wait(2)
        assert deliveries[1].message.message_id == fresh.message_id
    finally:
        await consumer.close()


async def _free(q: Queue) -> bool:
    dispatcher = q.system.dispatcher
    consumers = [c for s in dispatcher._services.values() for c in s.consumers]
    return all(c.reserved == 0 and not c.in_flight for c in consumers)


async def test_a_send_whose_caller_left_is_still_handed_over(q: Queue) -> None:
    # Review: a cancelled SendMessage cancelled its write's future, so a direct claim that was
    # written anyway stayed with nobody until its ack deadline.
    consumer = FakeConsumer(q.stub, "tron-node", q.md("tron-node"), max_in_flight=5)
    try:
        await until(lambda: _consumers(q, 1))
        queue = q.system.queue
        msg = message()
        principal = Principal("api-gateway", Role.SERVICE)
        task = asyncio.ensure_future(queue.send(principal, msg))
        await asyncio.sleep(0)
        task.cancel()
        [delivery] = await consumer.wait(1)
        assert delivery.message.message_id == msg.message_id
    finally:
        await consumer.close()
