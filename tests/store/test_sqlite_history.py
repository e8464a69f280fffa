"""The sqlite store keeps a bounded history: old revisions are compacted automatically (as etcd's
auto-compaction does), and a watcher further behind is told so (CompactedError), never served a
partial history."""

from __future__ import annotations

import asyncio

import pytest

from lucid_cp.store import CompactedError, SqliteStore
from lucid_cp.store import sqlite as sqlite_store


async def test_history_is_compacted_to_the_newest_revisions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sqlite_store, "HISTORY_KEPT", 10)
    store = SqliteStore(":memory:")
    try:
        for i in range(25):
            await store.put(b"/k/" + str(i % 3).encode(), str(i).encode())
        now = await store.current_revision()
        await store._compact_old_history()  # what every reaper pass does
        assert store._engine.compact_revision == now - 10
        with pytest.raises(CompactedError):
            async for _ in store.watch(b"/k/", 1):
                break
        # A watcher within the kept history still gets every change after its revision.
        async for batch in store.watch(b"/k/", now - 5):
            assert batch.revision == now - 5
            break
        # Below twice the kept history nothing is compacted again.
        before = store._engine.compact_revision
        await store.put(b"/k/0", b"x")
        await store._compact_old_history()
        assert store._engine.compact_revision == before
        assert (await store.get(b"/k/0")) is not None
    finally:
        await store.close()


async def test_a_quiet_watcher_survives_compaction(monkeypatch: pytest.MonkeyPatch) -> None:
    """A caught-up watcher whose prefix sees no writes moves on with the store (as an etcd watch
    does): compacting past its last event does not fail it, and it gets the next change."""
    monkeypatch.setattr(sqlite_store, "HISTORY_KEPT", 10)
    store = SqliteStore(":memory:")
    try:
        await store.put(b"/quiet/a", b"1")
        watch = store.watch(b"/quiet/", await store.current_revision())
        first = await anext(watch)
        assert [e.kv.key for e in first.events] == [b"/quiet/a"]
        pending = asyncio.ensure_future(anext(watch))
        await asyncio.sleep(0)
        for i in range(40):  # other prefixes only
            await store.put(b"/busy/" + str(i).encode(), b"x")
        await asyncio.sleep(0)
        await store._compact_old_history()
        assert store._engine.compact_revision > first.revision
        changed = await store.put(b"/quiet/b", b"2")
        batch = await asyncio.wait_for(pending, 2.0)
        assert batch.revision == changed and [e.kv.key for e in batch.events] == [b"/quiet/b"]
        await watch.aclose()
    finally:
        await store.close()
