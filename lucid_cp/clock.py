"""Injectable time: the real clock, a hand-driven one and a fast-forwarded one for tests.

Everything that waits (backoff, retry, probe intervals and timeouts, lease expiry) asks the
clock, never ``asyncio.sleep``/``asyncio.timeout`` directly, so tests can run time faster or by hand
without a test-only setting in the product.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock time, seconds since the epoch (may jump; survives restarts)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes backwards (for durations)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Waits ``seconds`` of this clock's time."""
        ...

    def timeout(self, seconds: float) -> AbstractAsyncContextManager[object]:
        """``async with clock.timeout(s):`` raises TimeoutError after ``s`` of this clock's time."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def timeout(self, seconds: float) -> AbstractAsyncContextManager[object]:
        return asyncio.timeout(max(0.0, seconds))


class ScaledClock:
    """Real time run ``speed`` times faster (tests and benchmarks): a 5 s health-check interval
    takes 5/speed real seconds, and now()/monotonic() advance ``speed`` seconds per real second."""

    def __init__(self, speed: float) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self._wall0 = time.time()
        self._mono0 = time.monotonic()

    def now(self) -> float:
        return self._wall0 + (time.monotonic() - self._mono0) * self.speed

    def monotonic(self) -> float:
        return self._mono0 + (time.monotonic() - self._mono0) * self.speed

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)

    def timeout(self, seconds: float) -> AbstractAsyncContextManager[object]:
        return asyncio.timeout(max(0.0, seconds) / self.speed)


class FakeClock:
    """A clock that only moves when told to. ``advance`` moves both readings and wakes sleepers
    whose time has come; ``set_now`` moves only the wall clock (to model a wall-clock jump)."""

    def __init__(self, now: float = 1_700_000_000.0, monotonic: float = 0.0) -> None:
        self._now = now
        self._monotonic = monotonic
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock cannot advance by a negative duration")
        self._now += seconds
        self._monotonic += seconds
        due = [s for s in self._sleepers if s[0] <= self._monotonic]
        self._sleepers = [s for s in self._sleepers if s[0] > self._monotonic]
        for _, waiter in due:
            if not waiter.done():
                waiter.set_result(None)

    def set_now(self, now: float) -> None:
        self._now = now

    @property
    def sleepers(self) -> int:
        """How many sleeps are waiting for the clock to advance."""
        return sum(1 for _, w in self._sleepers if not w.done())

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self._monotonic + seconds, waiter))
        await waiter

    def timeout(self, seconds: float) -> AbstractAsyncContextManager[object]:
        return _FakeTimeout(self, seconds)


class _FakeTimeout:
    """Cancels the enclosed block when the fake clock passes the deadline (as asyncio.timeout)."""

    def __init__(self, clock: FakeClock, seconds: float) -> None:
        self._clock = clock
        self._seconds = seconds
        self._timer: asyncio.Task[None] | None = None
        self._expired = False
        self._cancelling = 0

    async def __aenter__(self) -> _FakeTimeout:
        task = asyncio.current_task()
        assert task is not None
        self._cancelling = task.cancelling()

        async def expire() -> None:
            await self._clock.sleep(self._seconds)
            self._expired = True
            task.cancel()

        self._timer = asyncio.create_task(expire())
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> bool:
        assert self._timer is not None
        self._timer.cancel()
        if self._expired and exc_type is asyncio.CancelledError:
            current = asyncio.current_task()
            # Ours only when no other cancellation arrived meanwhile (as asyncio.timeout does).
            if current is not None and current.uncancel() <= self._cancelling:
                raise TimeoutError
        return False
