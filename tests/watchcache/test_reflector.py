"""The watchcache reflector against the real memory store (and a store that can be cut off):
list + watch, paging at a pinned revision, bad records, history, compaction, outage and resume,
read-your-writes. Waits are bounded by timeouts on real events, never fixed sleeps."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.clock import FakeClock, SystemClock
from lucid_cp.store import MemoryStore, Store, WatchEvent
from lucid_cp.watchcache import Backoff, Change, ChangeType, Handler, MessageHandler, Reflector

from .fakes import PREFIX, ControlledStore, RecordingClock, eventually, item, key

Item = pb.ServiceInstance
ADDED, UPDATED, REMOVED = ChangeType.ADDED, ChangeType.UPDATED, ChangeType.REMOVED


def handler() -> MessageHandler[Item]:
    return MessageHandler(Item, PREFIX, group=lambda i: i.service_name)


def reflector(store: Store, clock: object = None, **options: object) -> Reflector[Item]:
    return Reflector(store, PREFIX, handler(), clock=clock or SystemClock(), **options)  # type: ignore[arg-type]


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    backend = MemoryStore()
    try:
        yield backend
    finally:
        await backend.close()


def summary(changes: list[Change[Item]] | None) -> list[tuple[ChangeType, str]]:
    assert changes is not None
    return [(c.type, c.key) for c in changes]


async def test_lists_then_follows_the_watch(store: MemoryStore) -> None:
    await store.put(key("a"), item("a"))
    await store.put(b"/test/other", item("not mine"))  # outside the prefix
    cache = reflector(store)
    await cache.start()
    try:
        assert sorted(cache.keys()) == ["a"] and cache.resyncs == 1 and cache.connected
        start = cache.revision
        assert start == await store.current_revision()
        await store.put(key("b"), item("b"))
        await store.put(key("a"), item("a", weight=5))
        _, revision = await store.delete(key("b"))
        assert await cache.wait_for(revision, 5)
        assert cache.revision == revision
        assert sorted(cache) == ["a"] and len(cache) == 1
        got = cache.get("a")
        assert got is not None and got.weight == 5 and "b" not in cache
        assert summary(cache.changes_since(start)) == [(ADDED, "b"), (UPDATED, "a"), (REMOVED, "b")]
        assert cache.changes_since(revision) == []
    finally:
        await cache.stop()
    assert not cache.connected


async def test_lists_in_pages_at_one_pinned_revision() -> None:
    store = ControlledStore()
    for n in range(7):
        await store.put(key(f"k{n}"), item(f"k{n}"))
    listed_at = await store.current_revision()
    late: list[int] = []

    async def write_between_pages() -> None:
        if not late:  # once, after the first page: the list must not see it
            late.append(await store.put(key("late"), item("late")))

    store.after_range = write_between_pages
    cache = reflector(store, list_page=3)
    await cache.start()
    try:
        assert [r for r, _ in store.ranges] == [0, listed_at, listed_at]  # 3 + 3 + 1 keys
        assert [s for _, s in store.ranges][1:] == [key("k2") + b"\0", key("k5") + b"\0"]
        assert cache.revision == listed_at and "late" not in cache and len(cache) == 7
        assert store.watch_starts in ([], [listed_at + 1])
        assert await cache.wait_for(late[0], 5)  # the write between pages arrives by the watch
        assert summary(cache.changes_since(listed_at)) == [(ADDED, "late")]
    finally:
        await cache.stop()
        await store.close()


async def test_a_bad_record_is_logged_and_skipped_never_stalling(
    store: MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    await store.put(key("junk"), b"\xff\xff not a protobuf")
    await store.put(key("a"), item("a"))
    cache = reflector(store)
    await cache.start()
    try:
        assert sorted(cache) == ["a"]
        start = cache.revision
        with caplog.at_level(logging.ERROR, "lucid_cp.watchcache"):
            await store.put(key("a"), b"\xff\xff broken update")
            revision = await store.put(key("b"), item("b"))
            assert await cache.wait_for(revision, 5)
        assert "bad record" in caplog.text
        # a bad update leaves no stale value behind: the key is absent until a good record
        assert summary(cache.changes_since(start)) == [(REMOVED, "a"), (ADDED, "b")]
        assert sorted(cache) == ["b"]
    finally:
        await cache.stop()


class TwoKinds(Handler[str]):
    """One prefix, two kinds of key: cached names under items/, side counters under counts/."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.resets = 0
        self.applied_at: list[int] = []

    def key(self, store_key: bytes) -> str | None:
        if store_key.startswith(b"/two/items/"):
            return store_key.removeprefix(b"/two/items/").decode()
        return None

    def decode(self, key: str, kv: object) -> str:
        return getattr(kv, "value").decode()  # noqa: B009

    def other(self, event: WatchEvent) -> None:
        name = event.kv.key.removeprefix(b"/two/counts/").decode()
        if event.kv.value:
            self.counts[name] = int(event.kv.value)
        else:
            self.counts.pop(name, None)

    def reset(self) -> None:
        self.resets += 1
        self.counts.clear()

    def applied(self, revision: int) -> None:
        self.applied_at.append(revision)


async def test_a_prefix_holding_two_kinds_of_key(store: MemoryStore) -> None:
    await store.put(b"/two/items/a", b"alpha")
    await store.put(b"/two/counts/a", b"3")
    side = TwoKinds()
    cache: Reflector[str] = Reflector(store, b"/two/", side, clock=SystemClock())
    await cache.start()
    try:
        assert dict(cache.items()) == {"a": "alpha"} and side.counts == {"a": 3}
        assert side.resets == 1 and side.applied_at == [cache.revision]
        start = cache.revision
        await store.put(b"/two/counts/a", b"4")
        revision = await store.put(b"/two/items/b", b"beta")
        assert await cache.wait_for(revision, 5)
        assert side.counts == {"a": 4} and cache.get("b") == "beta"
        assert summary(cache.changes_since(start)) == [(ADDED, "b")]  # side records: no changes
    finally:
        await cache.stop()


async def test_history_has_a_floor(store: MemoryStore) -> None:
    cache = reflector(store, history=2)
    await cache.start()
    try:
        start = cache.revision
        revisions = [await store.put(key(f"k{n}"), item(f"k{n}")) for n in range(3)]
        assert await cache.wait_for(revisions[-1], 5)
        assert cache.changes_since(start) is None  # k0 fell out of the ring
        assert summary(cache.changes_since(revisions[0])) == [(ADDED, "k1"), (ADDED, "k2")]
    finally:
        await cache.stop()


async def test_compaction_relists_and_resyncs_every_subscriber() -> None:
    store = ControlledStore()
    await store.put(key("gone"), item("gone"))
    await store.put(key("stays"), item("stays"))
    clock = FakeClock()
    cache = reflector(store, clock)
    await cache.start()
    try:
        sub = cache.subscribe(
            lambda c: c.key, lambda: sorted(cache), start_revision=cache.revision + 1
        )
        await eventually(lambda: len(store.watch_starts) == 1)
        store.go_down()
        await eventually(lambda: not cache.connected)
        store.come_back()
        await store.delete(key("gone"))
        revision = await store.put(key("new"), item("new"))
        await store.compact(revision)  # the resumed watch cannot start where it left off
        clock.advance(Backoff().initial)
        assert await asyncio.wait_for(anext(sub), 5) == ["new", "stays"]  # a fresh snapshot
        assert cache.resyncs == 2 and cache.revision == revision and cache.connected
        assert cache.changes_since(revision - 1) is None  # the re-list reset history
        assert cache.changes_since(revision) == []
    finally:
        await cache.stop()
        await store.close()


async def test_an_outage_backs_off_on_the_clock_and_resumes_without_skipping() -> None:
    store = ControlledStore()
    await store.put(key("a"), item("a"))
    await store.put(key("b"), item("b"))
    clock = RecordingClock()
    cache = reflector(store, clock, backoff=Backoff(initial=0.5, maximum=1.5))
    await cache.start()
    try:
        sub = cache.subscribe(lambda c: (c.type, c.key), lambda: ["snapshot"])
        assert await asyncio.wait_for(anext(sub), 5) == ["snapshot"]
        await eventually(lambda: len(store.watch_starts) == 1)
        applied = cache.revision
        store.go_down()
        await clock.wait_for_sleeps(1)
        assert not cache.connected
        for expected in (1.0, 1.5, 1.5):  # exponential, capped
            clock.advance(clock.slept[-1])  # each retry fails while the store is down
            await clock.wait_for_sleeps(len(clock.slept) + 1)
            assert clock.slept[-1] == expected
        assert store.watch_starts == [applied + 1]  # no watch got through
        # written while the reflector was cut off: it must see all of it, in order
        store.come_back()
        await store.delete(key("a"))
        await store.put(key("c"), item("c"))
        revision = await store.put(key("b"), item("b", weight=2))
        clock.advance(clock.slept[-1])
        await eventually(lambda: cache.revision == revision)
        assert store.watch_starts == [applied + 1, applied + 1]  # resumed from applied + 1
        assert cache.connected and cache.resyncs == 1  # resumed, not re-listed
        got = [await asyncio.wait_for(anext(sub), 5) for _ in range(3)]
        assert got == [(REMOVED, "a"), (ADDED, "c"), (UPDATED, "b")]
        # the next outage starts again from the initial delay
        store.go_down()
        await clock.wait_for_sleeps(5)
        assert clock.slept[-1] == 0.5
    finally:
        await cache.stop()
        await store.close()


async def test_after_an_outage_a_quiet_prefix_reads_connected_again() -> None:
    store = ControlledStore()
    await store.put(key("a"), item("a"))
    clock = RecordingClock()
    cache = reflector(store, clock, backoff=Backoff(initial=0.5, maximum=1.5))
    await cache.start()
    try:
        await eventually(lambda: len(store.watch_starts) == 1)
        store.go_down()
        await clock.wait_for_sleeps(1)
        assert not cache.connected
        store.come_back()  # nothing is written under the prefix from now on
        clock.advance(clock.slept[-1])
        await eventually(lambda: len(store.watch_starts) == 2)
        assert cache.connected
        store.go_down()  # and the next outage backs off from the initial delay again
        await clock.wait_for_sleeps(2)
        assert clock.slept[-1] == 0.5
    finally:
        await cache.stop()
        await store.close()


async def test_start_fails_fast_when_the_store_is_down() -> None:
    store = ControlledStore()
    store.go_down()
    cache = reflector(store)
    with pytest.raises(Exception, match="unreachable"):
        await cache.start()
    await cache.stop()
    await store.close()


async def test_wait_for_returns_true_when_applied_and_false_on_the_clocks_timeout(
    store: MemoryStore,
) -> None:
    clock = FakeClock()
    cache = reflector(store, clock)
    await cache.start()
    try:
        assert await cache.wait_for(cache.revision, 0)
        future = cache.revision + 10
        waiting = asyncio.create_task(cache.wait_for(future, 3))
        sharing = asyncio.create_task(cache.wait_for(future, 30))
        await eventually(lambda: clock.sleepers == 2)  # both deadlines are on the clock
        clock.advance(3)
        assert await asyncio.wait_for(waiting, 5) is False
        assert not sharing.done()  # one waiter timing out leaves the others waiting
        revision = 0
        for n in range(10):
            revision = await store.put(key(f"k{n}"), item(f"k{n}"))
        assert revision == future
        assert await asyncio.wait_for(sharing, 5) is True
        next_write = asyncio.create_task(cache.wait_for(revision + 1, 30))
        await eventually(lambda: clock.sleepers == 1)
        assert await cache.wait_for(revision + 1, 0) is False  # no time to wait: not yet
        await store.put(key("x"), item("x"))
        assert await asyncio.wait_for(next_write, 5) is True
    finally:
        await cache.stop()
