"""Jittered scheduling: spread first rounds, fixed phase, isolation, bounded concurrency."""

from __future__ import annotations

import asyncio
import itertools
import random

from lucid_cp.discovery.health.scheduler import CheckScheduler

from .targets import wait_until


async def test_first_rounds_are_spread_over_the_interval() -> None:
    scheduler = CheckScheduler(100, rng=random.Random(7))
    loop = asyncio.get_running_loop()
    start = loop.time()
    first: dict[str, float] = {}

    def job_for(key: str):  # type: ignore[no-untyped-def]
        async def job(due: float) -> None:
            first.setdefault(key, due - start)

        return job

    for n in range(200):
        scheduler.schedule(f"k{n}", 0.3, job_for(f"k{n}"))
    await wait_until(lambda: len(first) == 200, 2.0, "every key's first round")
    await scheduler.stop()
    offsets = sorted(first.values())
    assert 0 <= offsets[0] and offsets[-1] < 0.3 + 0.01  # phases within the first interval
    # uniform over the interval: each tenth of it gets some of the 200 first rounds
    buckets = {min(int(o / 0.03), 9) for o in offsets}
    assert buckets == set(range(10))


async def test_rounds_keep_their_phase_and_a_slow_key_never_delays_another() -> None:
    scheduler = CheckScheduler(10, rng=random.Random(1))
    dues: list[float] = []
    hung = asyncio.Event()

    async def steady(due: float) -> None:
        dues.append(due)

    async def hang(due: float) -> None:
        hung.set()
        await asyncio.sleep(3600)

    scheduler.schedule("slow", 0.05, hang)
    scheduler.schedule("fast", 0.05, steady)
    await wait_until(lambda: hung.is_set() and len(dues) >= 8, 2.0, "eight fast rounds")
    await scheduler.stop()
    gaps = [b - a for a, b in itertools.pairwise(dues)]
    assert all(abs(g - 0.05) < 1e-9 for g in gaps)  # due times advance by exactly one interval


async def test_concurrency_is_bounded_by_slots() -> None:
    scheduler = CheckScheduler(3, rng=random.Random(2))
    running = 0
    peak = 0
    done = 0

    async def job(due: float) -> None:
        nonlocal running, peak, done
        async with scheduler.slots:
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.02)
            running -= 1
            done += 1

    for n in range(20):
        scheduler.schedule(f"k{n}", 0.01, job)
    await wait_until(lambda: done >= 40, 3.0, "forty rounds")
    await scheduler.stop()
    assert peak == 3


async def test_a_key_that_falls_behind_skips_missed_rounds_and_errors_do_not_stop_it() -> None:
    scheduler = CheckScheduler(1, rng=random.Random(3))
    dues: list[float] = []

    async def job(due: float) -> None:
        dues.append(due)
        if len(dues) == 2:
            await asyncio.sleep(0.25)  # five intervals late
        if len(dues) == 3:
            raise RuntimeError("a broken round")

    scheduler.schedule("k", 0.05, job)
    await wait_until(lambda: len(dues) >= 5, 2.0, "five rounds")
    await scheduler.stop()
    assert dues[2] - dues[1] >= 0.2  # the missed rounds were skipped, not replayed in a burst
    assert abs((dues[4] - dues[3]) - 0.05) < 1e-9


async def test_cancel_stops_a_key() -> None:
    scheduler = CheckScheduler(1)
    calls = 0

    async def job(due: float) -> None:
        nonlocal calls
        calls += 1

    scheduler.schedule("k", 0.01, job)
    await wait_until(lambda: calls >= 2, 1.0, "two rounds")
    scheduler.cancel("k")
    assert "k" not in scheduler and len(scheduler) == 0
    seen = calls
    await asyncio.sleep(0.05)  # ten intervals: a cancelled key would have run again
    assert calls == seen
    await scheduler.stop()
