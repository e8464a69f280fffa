"""Pull delivery on one replica: Consume streams and REST long polls.

Consumers of one service on this replica share its queue like a queue group: one task per
service hands the next messages, in delivery order, round-robin to the consumers with a free
slot (at most ``maxInFlight`` unacked deliveries each), claiming each with a compare-and-swap
(``MessageQueue.claim``), so a message is with one consumer at a time across every replica.
A slot frees when the delivery is acked or nacked, when the index shows the message left that
attempt (acked through REST, timed out by a sweeper), or when its ack deadline passes; but a
delivery still waiting to be written to the stream (a reader that does not read: the transport
is full) keeps its slot until it is taken out to be written, and is dropped then if its deadline
passed meanwhile (its claim times out as any other). So once the transport's buffers are full,
a stalled reader is not handed more and more deliveries, each burning an attempt, only to
receive them all stale. (What the transport took before, up to a few MB, it still receives.)

A long poll (PullMessages) claims directly, up to maxMessages and at most ``records.ANSWER_BYTES``
of deliveries (always at least one: an answer too big to send would leave its messages claimed
and unseen until their deadline), and waits for a wakeup or for the next backoff to end while
it has nothing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from lucid_cp.api.lucid.messaging.v1 import messages_pb2 as pb
from lucid_cp.api.lucid.messaging.v1 import queue_storage_pb2 as spb
from lucid_cp.auth.tokens import Principal
from lucid_cp.clock import Clock
from lucid_cp.messaging import records
from lucid_cp.messaging.claims import Claimer, Wakeups
from lucid_cp.messaging.index import Entry, QueueIndex
from lucid_cp.messaging.queue import DirectSlot
from lucid_cp.tasks import cancel_and_wait

log = logging.getLogger("lucid_cp.messaging.dispatch")

# Seconds to wait after a round that failed (the store did not answer) before the next.
ERROR_PAUSE = 0.5
# A delivery's bytes beyond its message's: the attempt, the ack deadline, the field framing.
DELIVERY_OVERHEAD = 64
# A Consume batch takes more deliveries while it holds fewer bytes than this.
BATCH_BYTES = 1024 * 1024


@dataclass(eq=False)
class Consumer:
    """One Consume stream."""

    service: str
    label: str  # "consumer <id> on <replica>": who holds its deliveries
    max_in_flight: int
    ack_wait: float  # seconds
    # Deliveries not acked yet: message id -> (attempt, ack deadline).
    in_flight: dict[str, tuple[int, float]] = field(default_factory=dict)
    # Those of them not written to the stream yet: (message id, attempt).
    unsent: set[tuple[str, int]] = field(default_factory=set)
    reserved: int = 0
    closed: bool = False
    error: BaseException | None = None
    _out: asyncio.Queue[pb.Delivery | None] = field(default_factory=asyncio.Queue)

    def free(self, now: float) -> int:
        for message_id, (attempt, deadline) in list(self.in_flight.items()):
            if deadline <= now and (message_id, attempt) not in self.unsent:
                del self.in_flight[message_id]  # its deadline passed: it is redelivered anyway
        return self.max_in_flight - len(self.in_flight) - self.reserved

    def hand(self, record: spb.StoredMessage) -> None:
        message_id = record.message.message_id
        self.in_flight[message_id] = (record.attempt, records.seconds(record.claim.ack_deadline))
        self.unsent.add((message_id, record.attempt))
        self._out.put_nowait(records.delivery(record))

    def settle(self, message_id: str) -> bool:
        """Frees the slot of ``message_id``'s delivery, unless it is not written yet (``take``
        frees it then)."""
        held = self.in_flight.get(message_id)
        if held is None or (message_id, held[0]) in self.unsent:
            return False
        del self.in_flight[message_id]
        return True

    def take(self, delivery: pb.Delivery, now: float) -> bool:
        """``delivery`` is out of the queue: whether to write it (it still holds its slot and
        its deadline has not passed). False frees its slot, if it held one."""
        message_id, attempt = delivery.message.message_id, delivery.attempt
        self.unsent.discard((message_id, attempt))
        held = self.in_flight.get(message_id)
        if held is None or held[0] != attempt:
            return False  # a newer attempt of it was handed since
        if held[1] > now:
            return True
        del self.in_flight[message_id]
        return False

    def end(self, error: BaseException | None = None) -> None:
        if not self.closed:
            self.closed = True
            self.error = error
            self._out.put_nowait(None)

    async def next(self) -> pb.Delivery | None:
        """The next delivery; None once the consumer is closed."""
        return await self._out.get()

    def next_nowait(self) -> pb.Delivery | None:
        """The next delivery if one is waiting; None when none is (or the consumer is closed:
        the end stays queued for ``next``)."""
        if self._out.empty():
            return None
        delivery = self._out.get_nowait()
        if delivery is None:
            self._out.put_nowait(None)
        return delivery


@dataclass(eq=False)
class _Service:
    consumers: list[Consumer] = field(default_factory=list)
    cursor: int = 0
    task: asyncio.Task[None] | None = None


class Dispatcher:
    def __init__(
        self,
        claimer: Claimer,
        index: QueueIndex,
        wakeups: Wakeups,
        clock: Clock,
        replica: str,
        config_of: Callable[[str], pb.ConsumerConfig],
    ) -> None:
        self.config_of = config_of
        self._claimer = claimer
        self._wakeups = wakeups
        self._clock = clock
        self._replica = replica
        self._services: dict[str, _Service] = {}
        self._holders: dict[str, Consumer] = {}
        # Messages claimed for a consumer here as they were sent (no claim of their own).
        self.direct_claims = 0
        index.listen(self._changed)

    @property
    def consumers(self) -> int:
        return sum(len(s.consumers) for s in self._services.values())

    def open(self, service: str, max_in_flight: int, ack_wait: float) -> Consumer:
        label = f"consumer {uuid.uuid4().hex[:12]} on {self._replica}"
        consumer = Consumer(service, label, max_in_flight, ack_wait)
        state = self._services.setdefault(service, _Service())
        state.consumers.append(consumer)
        if state.task is None or state.task.done():
            state.task = asyncio.create_task(self._serve(service, state), name="messaging-dispatch")
        self._wakeups.notify(service)
        return consumer

    def close(self, consumer: Consumer) -> None:
        """Ends the consumer; its unacked deliveries are redelivered after their deadline."""
        consumer.end()
        state = self._services.get(consumer.service)
        if state is None or consumer not in state.consumers:
            return
        state.consumers.remove(consumer)
        for message_id in list(consumer.in_flight):
            if self._holders.get(message_id) is consumer:
                del self._holders[message_id]
        if not state.consumers:
            del self._services[consumer.service]
            if state.task is not None:
                state.task.cancel()

    def reserve_direct(self, service: str) -> DirectSlot | None:
        """For a message of ``service`` being sent while nothing of it waits: a free slot of
        one of its consumers here (round-robin), reserved until the send is written; None when
        every consumer is full (the message is queued as usual)."""
        state = self._services.get(service)
        if state is None or not state.consumers:
            return None
        now = self._clock.now()
        consumers = state.consumers
        start = state.cursor % len(consumers)
        for consumer in consumers[start:] + consumers[:start]:
            if not consumer.closed and consumer.free(now) > 0:
                state.cursor += 1
                consumer.reserved += 1
                give = functools.partial(self._direct_written, consumer)
                return DirectSlot(consumer.label, consumer.ack_wait, give)
        return None

    def _direct_written(self, consumer: Consumer, record: spb.StoredMessage | None) -> None:
        consumer.reserved -= 1
        if record is None:
            self._wakeups.notify(consumer.service)  # the slot is free again
            return
        self.direct_claims += 1
        # The service's consumers as they are now (all may have left and others come).
        state = self._services.get(consumer.service) or _Service()
        self._hand(state, consumer, record)

    def settled(self, consumer: Consumer, message_id: str) -> None:
        """The consumer acked or nacked ``message_id``, or the message left that attempt: its
        slot is free (a delivery not written yet keeps it until ``next`` takes it out)."""
        if consumer.settle(message_id):
            self._wakeups.notify(consumer.service)
        self._forget(consumer, message_id)

    async def next(self, consumer: Consumer) -> pb.Delivery | None:
        """The consumer's next delivery to write to its stream; None once it is closed. One
        whose ack deadline passed while it waited is dropped, its slot freed."""
        while (delivery := await consumer.next()) is not None:
            if consumer.take(delivery, self._clock.now()):
                return delivery
            self._forget(consumer, delivery.message.message_id)
            self._wakeups.notify(consumer.service)
        return None

    async def next_batch(self, consumer: Consumer, limit: int) -> list[pb.Delivery] | None:
        """The next delivery and those already waiting behind it, up to ``limit`` and about
        ``BATCH_BYTES`` (each message is at most 256 KiB, so a batch stays far below the
        answer limit); None once the consumer is closed."""
        first = await self.next(consumer)
        if first is None:
            return None
        batch = [first]
        size = first.ByteSize()
        now = self._clock.now()
        while len(batch) < limit and size < BATCH_BYTES:
            delivery = consumer.next_nowait()
            if delivery is None:
                break
            if consumer.take(delivery, now):
                batch.append(delivery)
                size += delivery.ByteSize()
            else:
                self._forget(consumer, delivery.message.message_id)
                self._wakeups.notify(consumer.service)
        return batch

    def _forget(self, consumer: Consumer, message_id: str) -> None:
        if message_id not in consumer.in_flight and self._holders.get(message_id) is consumer:
            del self._holders[message_id]

    async def stop(self) -> None:
        states = list(self._services.values())
        self._services.clear()
        for state in states:
            for consumer in state.consumers:
                consumer.end()
        await cancel_and_wait(*(state.task for state in states))

    # -- Consume streams -----------------------------------------------------------------------

    def _changed(self, destination: str, message_id: str, entry: Entry | None) -> None:
        """Index listener: a delivery whose message left that attempt frees its slot."""
        holder = self._holders.get(message_id)
        if holder is None:
            return
        held = holder.in_flight.get(message_id)
        record = entry.record if entry is not None else None
        if (
            held is None
            or record is None
            or record.state != records.PROCESSING
            or record.attempt != held[0]
        ):
            self.settled(holder, message_id)

    async def _serve(self, service: str, state: _Service) -> None:
        with self._wakeups.following(service):
            while state.consumers:
                generation = self._wakeups.generation(service)
                try:
                    more, next_due = await self._round(service, state)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("dispatching %s failed: %s", service, exc)
                    await self._clock.sleep(ERROR_PAUSE)
                    continue
                if more:
                    continue
                timeout = None if next_due is None else max(0.0, next_due - self._clock.now())
                await self._wakeups.wait(service, generation, timeout)

    async def _round(self, service: str, state: _Service) -> tuple[bool, float | None]:
        """One round: claims as many messages as the consumers have free slots, round-robin.
        (whether another round may find more at once, the earliest backoff end)."""
        now = self._clock.now()
        slots = self._slots(state, now)
        if not slots:
            return False, None
        ready, next_due = self._claimer.reserve(service, len(slots))
        if not ready:
            return False, next_due
        assigned = list(zip(ready, slots, strict=False))
        for _, consumer in assigned:
            consumer.reserved += 1
        results = await self._claimer.claim_many([(e, c.label, c.ack_wait) for e, c in assigned])
        failed: BaseException | None = None
        for (_, consumer), result in zip(assigned, results, strict=True):
            consumer.reserved -= 1
            if isinstance(result, BaseException):
                failed = result
            elif result is not None:
                self._hand(state, consumer, result)
        if failed is not None:
            raise failed  # pause before the next round
        return len(ready) == len(slots), next_due

    def _slots(self, state: _Service, now: float) -> list[Consumer]:
        """One entry per free slot, round-robin over the consumers (starting after the one that
        started the last round)."""
        consumers = state.consumers
        if not consumers:
            return []
        start = state.cursor % len(consumers)
        state.cursor += 1
        ordered = consumers[start:] + consumers[:start]
        free = {id(c): max(0, c.free(now)) for c in ordered if not c.closed}
        slots: list[Consumer] = []
        for _ in range(max(free.values(), default=0)):
            for consumer in ordered:
                if free.get(id(consumer), 0) > 0:
                    slots.append(consumer)
                    free[id(consumer)] -= 1
        return slots

    def _hand(self, state: _Service, consumer: Consumer, record: spb.StoredMessage) -> None:
        if consumer.closed:  # it went away during the claim: another one takes it
            others = [c for c in state.consumers if not c.closed]
            if not others:
                log.info(
                    "message %s claimed for a consumer that left: redelivered after its "
                    "ack deadline",
                    record.message.message_id,
                )
                return
            consumer = min(others, key=lambda c: len(c.in_flight))
        consumer.hand(record)
        self._holders[record.message.message_id] = consumer

    # -- long polls ----------------------------------------------------------------------------

    async def pull(
        self, principal: Principal, service: str, max_messages: int, wait: float
    ) -> list[pb.Delivery]:
        """Claims up to ``max_messages`` of the caller's own queue (an admin's: any), held until
        the service's ack deadline; with none ready, waits up to ``wait`` seconds for the first
        (a new message, or one whose backoff ends)."""
        principal.require_acts_as(service)
        ack_wait = self.config_of(service).ack_wait_ms / 1000.0
        label = f"pull {uuid.uuid4().hex[:12]} on {self._replica}"
        deadline = self._clock.monotonic() + wait
        with self._wakeups.following(service):
            while True:
                generation = self._wakeups.generation(service)
                ready, next_due = self._claimer.reserve(service, max_messages)
                claimed = await self._claim_all(self._fitting(ready), label, ack_wait)
                if claimed:
                    return [records.delivery(r) for r in claimed]
                if ready:
                    continue  # every claim lost (a claim wakes nobody): others may be ready
                remaining = deadline - self._clock.monotonic()
                if remaining <= 0:
                    return []
                if next_due is not None:
                    remaining = min(remaining, max(0.0, next_due - self._clock.now()))
                await self._wakeups.wait(service, generation, remaining)

    def _fitting(self, ready: list[Entry]) -> list[Entry]:
        """The first of the reserved ``ready`` whose deliveries fit in ``records.ANSWER_BYTES``
        (at least one); the others' reservations are released. A claim changes no message, so the
        index's record tells its size."""
        size = 0
        for n, entry in enumerate(ready):
            size += entry.record.message.ByteSize() + DELIVERY_OVERHEAD
            if n > 0 and size > records.ANSWER_BYTES:
                for unused in ready[n:]:
                    self._claimer.release(unused)
                return ready[:n]
        return ready

    async def _claim_all(
        self, ready: Sequence[Entry], label: str, ack_wait: float
    ) -> list[spb.StoredMessage]:
        results = await self._claimer.claim_many([(e, label, ack_wait) for e in ready])
        claimed = [r for r in results if isinstance(r, spb.StoredMessage)]
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            if not claimed:
                raise errors[0]
            log.warning("%d claims of a pull failed: %s", len(errors), errors[0])
        return claimed
