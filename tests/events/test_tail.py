"""The log's tail on its own (memory store): a bounded ring of the newest events (by count and
by bytes), the floor below which reads go to the store, retention deletes moving the floor, and
the reader falling back to the store (with gap detection) when the ring does not reach back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from lucid_cp.clock import SystemClock
from lucid_cp.events.errors import CursorBehindRetention
from lucid_cp.events.log import EventLog
from lucid_cp.events.matching import Matcher
from lucid_cp.events.reader import EventReader
from lucid_cp.events.retention import Sweeper
from lucid_cp.events.tail import LogTail
from lucid_cp.store.memory import MemoryStore

from .conftest import event, subscription


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    s = MemoryStore()
    try:
        yield s
    finally:
        await s.close()


async def parts(store: MemoryStore, **tail: int) -> tuple[EventLog, LogTail, EventReader]:
    log = EventLog(store, SystemClock())
    await log.start()
    follower = LogTail(store, SystemClock(), **tail)
    await follower.start()
    return log, follower, EventReader(log, follower)


async def test_the_ring_keeps_the_newest_events_only(store: MemoryStore) -> None:
    await (log := EventLog(store, SystemClock())).start()
    for _ in range(2):
        await log.append(event())  # before the tail starts: only in the store
    await log.stop()
    log, tail, reader = await parts(store, ring=3)
    try:
        answers = [await log.append(event(data={"i": i})) for i in range(5)]
        assert await tail.wait_for(answers[-1].revision, 5)
        assert tail.head == 7
        assert tail.recent(1, 10) is None  # the ring starts at 5 (3 newest of 3..7)
        assert [e.sequence for e in tail.recent(4, 10) or []] == [5, 6, 7]
        assert tail.recent(7, 10) == []
        # The reader serves what the ring lacks from the store.
        events, more = await reader.read(0, 100)
        assert [e.sequence for e in events] == list(range(1, 8)) and not more
        events, more = await reader.read(4, 2)
        assert [e.sequence for e in events] == [5, 6] and more
    finally:
        await tail.stop()
        await log.stop()


async def test_the_ring_is_bounded_by_bytes(store: MemoryStore) -> None:
    log, tail, _ = await parts(store, ring=1000, ring_bytes=50_000)
    try:
        for _ in range(10):
            last = await log.append(event(data={"blob": "x" * 20_000}))
        assert await tail.wait_for(last.revision, 5)
        kept = tail.recent(tail.head - 10, 100)
        assert kept is None  # older ones were dropped
        assert [e.sequence for e in tail.recent(8, 100) or []] == [9, 10]
    finally:
        await tail.stop()
        await log.stop()


async def test_retention_moves_the_floor_and_reads_below_it_are_gaps(store: MemoryStore) -> None:
    log, tail, reader = await parts(store)
    sweeper = Sweeper(store, None, SystemClock(), count=2, seconds=3600, interval=3600)
    try:
        for _ in range(5):
            last = await log.append(event())
        assert await tail.wait_for(last.revision, 5)
        assert await sweeper.sweep() == 3
        assert await tail.wait_for(await store.current_revision(), 5)  # it saw the deletes
        assert tail.recent(2, 10) is None
        with pytest.raises(CursorBehindRetention) as caught:
            await reader.read(1, 10)
        assert (caught.value.lost, caught.value.resume_cursor) == (2, 3)
        events, _ = await reader.read(3, 10)
        assert [e.sequence for e in events] == [4, 5]
    finally:
        await tail.stop()
        await log.stop()


async def test_matching_skips_others_and_reports_the_cursor(store: MemoryStore) -> None:
    log, tail, reader = await parts(store)
    try:
        for t in ["a.x", "b.x", "a.y", "b.y", "a.z"]:
            last = await log.append(event(t))
        await tail.wait_for(last.revision, 5)
        matcher = Matcher.of(subscription("a.*"))
        batch = await reader.matching(0, 2, matcher)
        assert [e.event_type for e in batch.events] == ["a.x", "a.y"]
        assert batch.cursor == 3 and batch.more
        batch = await reader.matching(3, 2, matcher, fresh=True)
        assert [e.event_type for e in batch.events] == ["a.z"]
        assert batch.cursor == 5 and not batch.more
        nothing = await reader.matching(0, 10, Matcher.of(subscription("c.*")), max_scan=3)
        assert nothing.events == [] and nothing.cursor == 3 and nothing.more
    finally:
        await tail.stop()
        await log.stop()


async def test_waiters_wake_on_a_new_event(store: MemoryStore) -> None:
    log, tail, _ = await parts(store)
    try:
        waiting = asyncio.create_task(tail.wait_beyond(0))
        await asyncio.sleep(0.02)
        assert not waiting.done()
        await log.append(event())
        await asyncio.wait_for(waiting, 5)
    finally:
        await tail.stop()
        await log.stop()
