"""What every deliverer of one replica shares: the claims in flight here (so two local
consumers never race for one record) and per-service wakeups.

``Wakeups`` is a generation counter per service: a waiter reads the generation before looking
at the queue and waits only if nothing was notified since, so a message queued between the look
and the wait is never missed. The index notifies a service when a message of it is queued (or
re-queued); deliverers notify when one of their slots frees up. Counters are kept only for the
services someone follows (a Consume dispatcher, a pusher, a long poll): a waiter follows its
service while it reads generations and waits, and a service nobody follows costs nothing, however
many destinations messages are sent to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Sequence

from lucid_cp.api.lucid.messaging.v1 import queue_storage_pb2 as spb
from lucid_cp.clock import Clock
from lucid_cp.messaging import records
from lucid_cp.messaging.index import Entry, QueueIndex
from lucid_cp.messaging.queue import MessageQueue
from lucid_cp.tasks import cancel_and_wait

log = logging.getLogger("lucid_cp.messaging.claims")


class Wakeups:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        # Per followed service: its generation and how many follow it.
        self._generation: dict[str, int] = {}
        self._followers: dict[str, int] = {}
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}

    @property
    def followed(self) -> int:
        """How many services have a generation counter here."""
        return len(self._generation)

    @contextlib.contextmanager
    def following(self, service: str) -> Iterator[None]:
        """Counts ``service``'s notifications while the caller reads generations and waits."""
        self._followers[service] = self._followers.get(service, 0) + 1
        self._generation.setdefault(service, 0)
        try:
            yield
        finally:
            left = self._followers[service] - 1
            if left:
                self._followers[service] = left
            else:
                del self._followers[service]
                del self._generation[service]

    def generation(self, service: str) -> int:
        """Only meaningful while following ``service``."""
        return self._generation.get(service, 0)

    def notify(self, service: str) -> None:
        if service in self._generation:
            self._generation[service] += 1
        for waiter in self._waiters.pop(service, ()):
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self, service: str, generation: int, timeout: float | None) -> bool:
        """Until ``service`` is notified after ``generation`` (True) or ``timeout`` seconds of
        the clock pass (False; None: no limit)."""
        if self.generation(service) != generation:
            return True
        if timeout is not None and timeout <= 0:
            return False
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(service, set()).add(waiter)
        try:
            if timeout is None:
                await waiter
            else:
                async with self._clock.timeout(timeout):
                    await waiter
            return True
        except TimeoutError:
            return False
        finally:
            waiters = self._waiters.get(service)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[service]

    def on_change(self, destination: str, message_id: str, entry: Entry | None) -> None:
        """Index listener: a message of ``destination`` was queued (new, or back from a failed
        attempt) or left processing (its slot is free): its deliverers look again. A claim
        (queued -> processing) wakes nobody."""
        if entry is None or entry.record.state != records.PROCESSING:
            self.notify(destination)


class Claimer:
    def __init__(self, queue: MessageQueue, index: QueueIndex, clock: Clock) -> None:
        self._queue = queue
        self._index = index
        self._clock = clock
        self._pending: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def reserve(self, service: str, limit: int) -> tuple[list[Entry], float | None]:
        """Up to ``limit`` claimable messages of ``service`` in delivery order, reserved for
        the caller (who must ``claim`` or ``release`` each), and the earliest time a message in
        backoff becomes due. Expired ones met on the way are marked expired meanwhile."""
        ready, stale, next_due = self._index.candidates(
            service, limit, self._clock.now(), self._pending
        )
        for entry in ready:
            self._pending.add(entry.message_id)
        for entry in stale:
            self._pending.add(entry.message_id)
            task = asyncio.create_task(self._expire(entry), name="messaging-expire")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return ready, next_due

    def release(self, entry: Entry) -> None:
        self._pending.discard(entry.message_id)

    async def claim(self, entry: Entry, consumer: str, ack_wait: float) -> spb.StoredMessage | None:
        """Claims a reserved message; None when another claim or change won."""
        [claimed] = await self.claim_many([(entry, consumer, ack_wait)])
        if isinstance(claimed, BaseException):
            raise claimed
        return claimed

    async def claim_many(
        self, claims: Sequence[tuple[Entry, str, float]]
    ) -> list[spb.StoredMessage | BaseException | None]:
        """Claims reserved messages, each (entry, consumer, ack wait), at once; per claim the
        record claimed, None when another claim or change won, or the store's error."""
        try:
            return await self._queue.claim_many(claims)
        finally:
            for entry, _, _ in claims:
                self.release(entry)

    async def _expire(self, entry: Entry) -> None:
        try:
            await self._queue.expire(entry)
        except Exception as exc:
            log.warning("marking message %s expired failed: %s", entry.message_id, exc)
        finally:
            self.release(entry)

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
