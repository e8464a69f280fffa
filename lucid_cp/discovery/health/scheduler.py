"""Jittered periodic scheduling with bounded concurrency.

Each scheduled key gets its own task: a slow or hanging instance only ever delays itself. The
first round of a key starts at a random point of its first interval (as Consul staggers its
checks), so 10k instances registered together never fire in lockstep; later rounds keep that
phase (due times advance by exactly one interval, no drift). A key that falls behind by more
than an interval skips the missed rounds instead of bursting to catch up.

``slots`` bounds how many probe attempts run at once across every key; jobs take a slot per
attempt (see ``probes.run_round``), never while pausing between attempts.

Times are the injected clock's (``clock.monotonic()``, ``clock.sleep``).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from lucid_cp.clock import Clock
from lucid_cp.tasks import cancel_and_wait

log = logging.getLogger("lucid_cp.discovery.health")

Job = Callable[[float], Awaitable[None]]  # called with the clock.monotonic() the round was due


class CheckScheduler:
    def __init__(
        self, max_concurrency: int, clock: Clock, *, rng: random.Random | None = None
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self._clock = clock
        self.slots = asyncio.Semaphore(max_concurrency)
        self._rng = rng or random.Random()
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, key: str) -> bool:
        return key in self._tasks

    def schedule(self, key: str, interval: float, job: Job) -> None:
        """Runs ``job`` every ``interval`` seconds from a random phase; replaces ``key``'s job."""
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.cancel(key)
        first_due = self._clock.monotonic() + self._rng.uniform(0, interval)
        self._tasks[key] = asyncio.create_task(
            self._loop(key, interval, first_due, job), name=f"health-check-{key}"
        )

    def cancel(self, key: str) -> None:
        task = self._tasks.pop(key, None)
        if task is not None:
            task.cancel()

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        await cancel_and_wait(*tasks)

    async def _loop(self, key: str, interval: float, due: float, job: Job) -> None:
        while True:
            delay = due - self._clock.monotonic()
            if delay > 0:
                await self._clock.sleep(delay)
            try:
                await job(due)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("health-check round for %s failed", key)
            due += interval
            behind = self._clock.monotonic() - due
            if behind > interval:
                due += (behind // interval) * interval
