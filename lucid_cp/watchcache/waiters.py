"""Read-your-writes: wait until a revision has been applied, with a deadline on the injected clock.

Waiters of one revision share one future, and only the waiters whose revision has been reached
are woken (a heap ordered by revision), so many concurrent writers do not wake each other.
"""

from __future__ import annotations

import asyncio
import heapq

from lucid_cp.clock import Clock


class RevisionWaiters:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._revision = 0
        self._futures: dict[int, asyncio.Future[None]] = {}
        self._heap: list[int] = []

    @property
    def pending(self) -> int:
        """Distinct revisions someone is waiting for."""
        return len(self._futures)

    def advance(self, revision: int) -> None:
        """Records that ``revision`` (and everything before it) has been applied."""
        self._revision = max(self._revision, revision)
        while self._heap and self._heap[0] <= self._revision:
            future = self._futures.pop(heapq.heappop(self._heap))
            if not future.done():
                future.set_result(None)

    async def wait(self, revision: int, timeout: float) -> bool:
        """True once ``revision`` is applied; False when ``timeout`` (clock seconds) passes first."""
        if revision <= self._revision:
            return True
        if timeout <= 0:
            return False
        future = self._futures.get(revision)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._futures[revision] = future
            heapq.heappush(self._heap, revision)
        try:
            async with self._clock.timeout(timeout):
                # shielded: a waiter timing out must not cancel the future others share
                await asyncio.shield(future)
        except TimeoutError:
            return revision <= self._revision
        return True
