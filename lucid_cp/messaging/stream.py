"""One Consume stream: the ``start``, then the consumer's acks and nacks (alone, or several in
one ``acks`` batch) read in the background while deliveries are relayed out (one per response,
or with ``maxBatch`` what is ready, in ``deliveries``). Acks and nacks run concurrently (at most maxInFlight are
outstanding anyway); one that fails (409: the deadline passed and the message went to someone
else; the store did not answer) frees the slot and is logged: the message's own state says what
happened, and an unacked delivery is redelivered after its deadline. A bad message (no
``start`` first, a second ``start``, an empty one, one breaking a field rule) ends the stream
with INVALID_ARGUMENT; whatever ends it, its consumer leaves the dispatcher."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from lucid_cp.api.lucid.messaging.v1 import messages_pb2 as pb
from lucid_cp.auth.tokens import Principal
from lucid_cp.errors import FieldViolation, LucidError
from lucid_cp.messaging.dispatch import Consumer, Dispatcher
from lucid_cp.messaging.errors import InvalidMessageRequest
from lucid_cp.messaging.queue import MessageQueue
from lucid_cp.store.base import StoreError
from lucid_cp.tasks import cancel

log = logging.getLogger("lucid_cp.messaging.stream")


def _invalid(field: str, description: str) -> InvalidMessageRequest:
    return InvalidMessageRequest(f"{field}: {description}", [FieldViolation(field, description)])


async def consume(
    queue: MessageQueue,
    dispatcher: Dispatcher,
    principal: Principal,
    requests: AsyncIterator[pb.ConsumeRequest],
    on_done: Callable[[Callable[[], None]], None],
) -> AsyncIterator[pb.ConsumeResponse]:
    first = await anext(requests, None)
    if first is None:
        return  # hung up before starting
    if first.WhichOneof("kind") != "start":
        raise _invalid("start", "the first message of a Consume stream must be a start")
    start = first.start
    principal.require_acts_as(start.service_name)
    config = dispatcher.config_of(start.service_name)
    consumer = dispatcher.open(
        start.service_name,
        start.max_in_flight if start.HasField("max_in_flight") else config.max_in_flight,
        (start.ack_wait_ms if start.HasField("ack_wait_ms") else config.ack_wait_ms) / 1000.0,
    )
    on_done(lambda: dispatcher.close(consumer))
    reader = asyncio.create_task(
        _read(queue, dispatcher, consumer, principal, requests), name="messaging-consume-reader"
    )
    on_done(lambda: cancel(reader))
    max_batch = start.max_batch if start.HasField("max_batch") else 1
    try:
        while (batch := await dispatcher.next_batch(consumer, max_batch)) is not None:
            if max_batch == 1:
                yield pb.ConsumeResponse(delivery=batch[0])
            else:
                yield pb.ConsumeResponse(deliveries=batch)
        if consumer.error is not None:
            raise consumer.error
    finally:
        reader.cancel()
        dispatcher.close(consumer)


async def _read(
    queue: MessageQueue,
    dispatcher: Dispatcher,
    consumer: Consumer,
    principal: Principal,
    requests: AsyncIterator[pb.ConsumeRequest],
) -> None:
    settling: set[asyncio.Task[None]] = set()
    try:
        async for message in requests:
            kind = message.WhichOneof("kind")
            if kind == "start":
                raise _invalid("start", "a Consume stream starts once")
            if kind is None:
                raise _invalid("ack", "each message after the start is an ack or a nack")
            settles = list(message.acks.acks) if kind == "acks" else [getattr(message, kind)]
            task = asyncio.create_task(_settle(queue, dispatcher, consumer, principal, settles))
            settling.add(task)
            task.add_done_callback(settling.discard)
    except asyncio.CancelledError:
        for task in settling:
            task.cancel()
        raise
    except Exception as exc:  # a bad message: the stream ends with its error
        consumer.end(exc)
        dispatcher.close(consumer)
        return
    if settling:
        await asyncio.gather(*settling, return_exceptions=True)
    consumer.end()  # the consumer half-closed: the stream is over


async def _settle(
    queue: MessageQueue,
    dispatcher: Dispatcher,
    consumer: Consumer,
    principal: Principal,
    settles: list[pb.AckMessageRequest | pb.NackMessageRequest],
) -> None:
    """Writes the acks and nacks of one stream message (together: they share store txns);
    each frees its slot as it ends."""
    left = {settle.message_id for settle in settles}

    def settled(message_id: str) -> None:
        left.discard(message_id)
        dispatcher.settled(consumer, message_id)

    try:
        failures = await queue.settle_many(principal, settles, settled)
    finally:
        for message_id in list(left):  # cancelled: free what is left
            settled(message_id)
    for settle, failure in zip(settles, failures, strict=True):
        if isinstance(failure, (LucidError, StoreError)):
            kind = "ack" if isinstance(settle, pb.AckMessageRequest) else "nack"
            log.info("%s of message %s on %s: %s", kind, settle.message_id, consumer.label, failure)
        elif failure is not None:
            log.error("%s failed on %s", settle.message_id, consumer.label, exc_info=failure)
