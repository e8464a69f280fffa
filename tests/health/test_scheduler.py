"""Jittered scheduling: spread first rounds, fixed phase, isolation, bounded concurrency.

Time is a FakeClock moved by hand; every wait is for a condition (with a real-time bound)."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable

from lucid_cp.clock import FakeClock
from lucid_cp.discovery.health.scheduler import CheckScheduler

from .targets import wait_until


async def tick(clock: FakeClock, seconds: float, settled: Callable[[], bool], what: str) -> None:
    """Moves the clock, then waits until the rounds it made due have run (``settled``)."""
    clock.advance(seconds)
    await wait_until(settled, 2.0, what)


async def test_first_rounds_are_spread_over_the_interval() -> None:
    clock = FakeClock()
    scheduler = CheckScheduler(100, clock, rng=random.Random(7))
    start = clock.monotonic()
    first: dict[str, float] = {}

    def job_for(key: str):  # type: ignore[no-untyped-def]
        async def job(due: float) -> None:
            first.setdefault(key, due - start)

        return job

    for n in range(200):
        scheduler.schedule(f"k{n}", 0.3, job_for(f"k{n}"))
    await wait_until(lambda: clock.sleepers == 200, 2.0, "every key waiting for its phase")
    assert first == {}  # nothing runs before its time
    await tick(clock, 0.3, lambda: len(first) == 200, "every key's first round")
    await scheduler.stop()
    offsets = sorted(first.values())
    assert 0 <= offsets[0] and offsets[-1] < 0.3  # phases within the first interval
    # uniform over the interval: each tenth of it gets some of the 200 first rounds
    buckets = {min(int(o / 0.03), 9) for o in offsets}
    assert buckets == set(range(10))


async def test_rounds_keep_their_phase_and_a_slow_key_never_delays_another() -> None:
    clock = FakeClock()
    scheduler = CheckScheduler(10, clock, rng=random.Random(1))
    dues: list[float] = []
    hung = asyncio.Event()

    async def steady(due: float) -> None:
        dues.append(due)

    async def hang(due: float) -> None:
        hung.set()
        await asyncio.Event().wait()  # never answers

    scheduler.schedule("slow", 0.05, hang)
    scheduler.schedule("fast", 0.05, steady)
    await wait_until(lambda: clock.sleepers == 2, 2.0, "both keys waiting for their phase")
    await tick(clock, 0.05, lambda: hung.is_set() and len(dues) == 1, "both first rounds")
    for n in range(2, 9):  # the slow key hangs in its first round; the fast one goes on
        await tick(clock, 0.05, lambda n=n: len(dues) == n, f"fast round {n}")
    await scheduler.stop()
    gaps = [b - a for a, b in itertools.pairwise(dues)]
    assert all(abs(g - 0.05) < 1e-9 for g in gaps)  # due times advance by exactly one interval


async def test_concurrency_is_bounded_by_slots() -> None:
    clock = FakeClock()
    scheduler = CheckScheduler(3, clock, rng=random.Random(2))
    gate = asyncio.Event()
    running = 0
    peak = 0
    done = 0

    async def job(due: float) -> None:
        nonlocal running, peak, done
        async with scheduler.slots:
            running += 1
            peak = max(peak, running)
            await gate.wait()
            running -= 1
            done += 1

    for n in range(20):
        scheduler.schedule(f"k{n}", 1.0, job)
    await wait_until(lambda: clock.sleepers == 20, 2.0, "every key waiting for its phase")
    clock.advance(1.0)  # all twenty first rounds are due at once
    await wait_until(lambda: running == 3, 2.0, "three rounds holding the three slots")
    await wait_until(lambda: clock.sleepers == 0, 2.0, "every round started")
    assert running == 3 and peak == 3  # seventeen rounds wait for a slot
    gate.set()
    await wait_until(lambda: done == 20, 2.0, "every round done")
    await scheduler.stop()
    assert peak == 3


async def test_a_key_that_falls_behind_skips_missed_rounds_and_errors_do_not_stop_it() -> None:
    clock = FakeClock()
    scheduler = CheckScheduler(1, clock, rng=random.Random(3))
    dues: list[float] = []
    stuck = asyncio.Event()
    release = asyncio.Event()

    async def job(due: float) -> None:
        dues.append(due)
        if len(dues) == 2:
            stuck.set()
            await release.wait()
        if len(dues) == 3:
            raise RuntimeError("a broken round")

    scheduler.schedule("k", 0.05, job)
    await wait_until(lambda: clock.sleepers == 1, 2.0, "the key waiting for its phase")
    await tick(clock, 0.05, lambda: len(dues) == 1 and clock.sleepers == 1, "round 1")
    await tick(clock, 0.05, stuck.is_set, "round 2 to start")
    clock.advance(0.25)  # round 2 runs five intervals long
    release.set()
    await wait_until(lambda: len(dues) == 3 and clock.sleepers == 1, 2.0, "round 3 (raising)")
    for n in (4, 5):
        await tick(clock, 0.05, lambda n=n: len(dues) == n, f"round {n}")
    await scheduler.stop()
    assert dues[2] - dues[1] >= 0.2  # the missed rounds were skipped, not replayed in a burst
    assert abs((dues[4] - dues[3]) - 0.05) < 1e-9


async def test_cancel_stops_a_key() -> None:
    clock = FakeClock()
    scheduler = CheckScheduler(2, clock)
    calls = {"k": 0, "witness": 0}

    def job_for(key: str):  # type: ignore[no-untyped-def]
        async def job(due: float) -> None:
            calls[key] += 1

        return job

    scheduler.schedule("k", 0.01, job_for("k"))
    scheduler.schedule("witness", 0.01, job_for("witness"))
    await wait_until(lambda: clock.sleepers == 2, 2.0, "both keys waiting")
    await tick(clock, 0.01, lambda: calls == {"k": 1, "witness": 1}, "both first rounds")
    scheduler.cancel("k")
    assert "k" not in scheduler and len(scheduler) == 1
    for n in range(2, 12):  # ten intervals: the witness runs each time, the cancelled key never
        await tick(clock, 0.01, lambda n=n: calls["witness"] == n, f"witness round {n}")
    assert calls["k"] == 1
    await scheduler.stop()
