"""Injectable time sources: the real one and a hand-driven one for tests."""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock time, seconds since the epoch (may jump; survives restarts)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes backwards (for durations)."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that only moves when told to. ``advance`` moves both readings; ``set_now`` moves
    only the wall clock (to model a wall-clock jump)."""

    def __init__(self, now: float = 1_700_000_000.0, monotonic: float = 0.0) -> None:
        self._now = now
        self._monotonic = monotonic

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock cannot advance by a negative duration")
        self._now += seconds
        self._monotonic += seconds

    def set_now(self, now: float) -> None:
        self._now = now
