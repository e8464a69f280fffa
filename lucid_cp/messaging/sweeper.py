"""The sweeper: every replica, every ``interval`` seconds of the injected clock, looks over its
index for the work no request triggers.

* A delivery past its ack deadline (its consumer or replica went away, or is too slow): the
  attempt is recorded as timed out and the message re-queued after the backoff (failed and
  dead-lettered when it was the last attempt; expired when its TTL passed meanwhile).
* A queued message past its expiry: expired (a claim would do the same; this also covers
  destinations nobody consumes).
* Retention: final records (delivered, failed but not dead-lettered, expired) older than
  ``retention`` seconds are deleted. Dead-lettered ones stay until replayed.

Every change is a compare-and-swap: replicas sweeping the same record race harmlessly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial

from lucid_cp.clock import Clock
from lucid_cp.messaging import records
from lucid_cp.messaging.index import QueueIndex
from lucid_cp.messaging.queue import MessageQueue
from lucid_cp.tasks import cancel_and_wait

log = logging.getLogger("lucid_cp.messaging.sweeper")

CONCURRENCY = 64  # store writes of one sweep in flight at once


class Sweeper:
    def __init__(
        self,
        queue: MessageQueue,
        index: QueueIndex,
        clock: Clock,
        *,
        interval: float,
        retention: float,
    ) -> None:
        self._queue = queue
        self._index = index
        self._clock = clock
        self._interval = interval
        self._retention = retention
        self._task: asyncio.Task[None] | None = None
        self.timed_out = 0
        self.expired = 0
        self.deleted = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="messaging-sweeper")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _run(self) -> None:
        while True:
            await self._clock.sleep(self._interval)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("messaging sweep failed")

    async def sweep(self) -> None:
        now = self._clock.now()
        work: list[Callable[[], Awaitable[None]]] = []
        for entry in self._index.entries():
            record = entry.record
            if records.deadline_passed(record, now):
                self.timed_out += 1
                work.append(partial(self._queue.time_out, entry))
            elif record.state == records.QUEUED and records.expired(record, now):
                self.expired += 1
                work.append(partial(self._queue.expire, entry))
        for message_id, revision in self._index.expired_finals(now - self._retention):
            self.deleted += 1
            work.append(partial(self._queue.delete_final, message_id, revision))
        for start in range(0, len(work), CONCURRENCY):
            results = await asyncio.gather(
                *(w() for w in work[start : start + CONCURRENCY]), return_exceptions=True
            )
            for result in results:
                if isinstance(result, Exception):
                    log.warning("a sweep write failed: %s", result)
