"""Subscriptions: keyed fan-out, replay, overflow into a snapshot, and close()."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.clock import SystemClock
from lucid_cp.store import MemoryStore
from lucid_cp.watchcache import Change, ChangeType, MessageHandler, Reflector

from .fakes import PREFIX, eventually, item, key

Item = pb.ServiceInstance
ADDED, UPDATED, REMOVED = ChangeType.ADDED, ChangeType.UPDATED, ChangeType.REMOVED


def render(change: Change[Item]) -> tuple[ChangeType, str, str]:
    return change.type, change.key, change.group


@pytest.fixture
async def parts() -> AsyncIterator[tuple[MemoryStore, Reflector[Item]]]:
    store = MemoryStore()
    handler = MessageHandler(Item, PREFIX, group=lambda i: i.service_name)
    cache = Reflector(store, PREFIX, handler, clock=SystemClock(), queue_size=3)
    await cache.start()
    try:
        yield store, cache
    finally:
        await cache.stop()
        await store.close()


def snapshot_of(cache: Reflector[Item], group: str = "") -> object:
    return lambda: (
        "snapshot",
        sorted(k for k, v in cache.items() if not group or v.service_name == group),
    )


async def test_a_change_reaches_its_group_and_all_groups_only(parts) -> None:
    store, cache = parts
    a = cache.subscribe(render, snapshot_of(cache, "A"), group="A", start_revision=1 << 40)
    b = cache.subscribe(render, snapshot_of(cache, "B"), group="B", start_revision=1 << 40)
    every = cache.subscribe(render, snapshot_of(cache), start_revision=1 << 40)
    assert cache.subscribers == 3
    b_next = asyncio.create_task(anext(b))
    revision = await store.put(key("a1"), item("a1", "A"))
    assert await cache.wait_for(revision, 5)
    assert await asyncio.wait_for(anext(a), 5) == (ADDED, "a1", "A")
    assert await asyncio.wait_for(anext(every), 5) == (ADDED, "a1", "A")
    assert not b_next.done() and len(b) == 0  # group B was not woken
    await store.put(key("b1"), item("b1", "B"))
    assert await asyncio.wait_for(b_next, 5) == (ADDED, "b1", "B")
    assert await asyncio.wait_for(anext(every), 5) == (ADDED, "b1", "B")
    assert len(a) == 0


async def test_match_filters_within_a_group_and_render_runs_once_per_change(parts) -> None:
    store, cache = parts
    calls: list[str] = []

    def counted(change: Change[Item]) -> str:
        calls.append(change.key)
        return change.key

    heavy = cache.subscribe(counted, lambda: "s", match=lambda i: i.weight > 5)
    light = cache.subscribe(counted, lambda: "s", match=lambda i: i.weight <= 5)
    twin = cache.subscribe(counted, lambda: "s", match=lambda i: i.weight <= 5)
    for sub in (heavy, light, twin):
        assert await asyncio.wait_for(anext(sub), 5) == "s"
    await store.put(key("h"), item("h", weight=9))
    await store.put(key("l"), item("l", weight=1))
    assert await asyncio.wait_for(anext(heavy), 5) == "h"
    assert await asyncio.wait_for(anext(light), 5) == "l"
    assert await asyncio.wait_for(anext(twin), 5) == "l"
    assert calls == ["h", "l"]


async def test_a_value_moving_groups_leaves_the_old_one(parts) -> None:
    store, cache = parts
    start = cache.revision + 1
    old = cache.subscribe(render, snapshot_of(cache, "A"), group="A", start_revision=start)
    new = cache.subscribe(render, snapshot_of(cache, "B"), group="B", start_revision=start)
    await store.put(key("x"), item("x", "A"))
    await store.put(key("x"), item("x", "B"))
    assert await asyncio.wait_for(anext(old), 5) == (ADDED, "x", "A")
    assert await asyncio.wait_for(anext(old), 5) == (REMOVED, "x", "A")
    assert await asyncio.wait_for(anext(new), 5) == (ADDED, "x", "B")


async def test_replay_from_a_revision_then_live_changes(parts) -> None:
    store, cache = parts
    first = await store.put(key("a"), item("a", "A"))
    await store.put(key("b"), item("b", "B"))
    revision = await store.put(key("a"), item("a", "A", weight=1))
    assert await cache.wait_for(revision, 5)
    sub = cache.subscribe(render, snapshot_of(cache, "A"), group="A", start_revision=first + 1)
    assert await asyncio.wait_for(anext(sub), 5) == (UPDATED, "a", "A")
    await store.delete(key("a"))
    assert await asyncio.wait_for(anext(sub), 5) == (REMOVED, "a", "A")
    replayed = cache.subscribe(render, snapshot_of(cache), start_revision=revision)
    assert await asyncio.wait_for(anext(replayed), 5) == (UPDATED, "a", "A")
    assert await asyncio.wait_for(anext(replayed), 5) == (REMOVED, "a", "A")
    # more retained changes than the queue holds (3): a snapshot instead of a partial replay
    too_many = cache.subscribe(render, snapshot_of(cache), start_revision=first)
    assert await asyncio.wait_for(anext(too_many), 5) == ("snapshot", ["b"])
    # a revision the history no longer reaches: a snapshot
    forgotten = cache.subscribe(render, snapshot_of(cache), start_revision=first - 1)
    assert await asyncio.wait_for(anext(forgotten), 5) == ("snapshot", ["b"])


async def test_overflow_becomes_a_snapshot_never_a_silent_drop(parts) -> None:
    store, cache = parts
    sub = cache.subscribe(render, snapshot_of(cache))
    assert await asyncio.wait_for(anext(sub), 5) == ("snapshot", [])
    revision = 0
    for n in range(5):  # queue_size=3; nobody reads meanwhile
        revision = await store.put(key(f"k{n}"), item(f"k{n}"))
    assert await cache.wait_for(revision, 5)
    assert sub.overflows == 1 and sub.needs_snapshot
    assert await asyncio.wait_for(anext(sub), 5) == ("snapshot", [f"k{n}" for n in range(5)])
    await store.put(key("k9"), item("k9"))
    assert await asyncio.wait_for(anext(sub), 5) == (ADDED, "k9", "g")


async def test_close_ends_a_pending_and_later_iteration_and_is_idempotent(parts) -> None:
    store, cache = parts
    sub = cache.subscribe(render, snapshot_of(cache))
    received: list[object] = []

    async def consume() -> None:
        async for response in sub:
            received.append(response)

    consumer = asyncio.create_task(consume())
    revision = await store.put(key("a"), item("a"))
    assert await cache.wait_for(revision, 5)
    await eventually(lambda: len(received) == 2)
    assert cache.subscribers == 1
    sub.close()  # the consumer is parked in __anext__: closing must wake and end it
    await asyncio.wait_for(consumer, 5)
    assert received == [("snapshot", []), (ADDED, "a", "g")]
    assert cache.subscribers == 0 and sub.closed
    sub.close()  # idempotent
    await store.put(key("b"), item("b"))
    with pytest.raises(StopAsyncIteration):
        await anext(sub)
