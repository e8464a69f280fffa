"""The log on its own (memory store): group commit, two appenders racing on one store (two
replicas), the internal append that keeps the first of an id, the txn size limits."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from lucid_cp.api.lucid.messaging.v1 import event_storage_pb2 as spb
from lucid_cp.clock import SystemClock
from lucid_cp.events import keys
from lucid_cp.events.errors import EventIdConflict
from lucid_cp.events.log import EventLog
from lucid_cp.store.base import MAX_REQUEST_BYTES
from lucid_cp.store.memory import MemoryStore

from .conftest import event


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    s = MemoryStore()
    try:
        yield s
    finally:
        await s.close()


async def started(store: MemoryStore) -> EventLog:
    log = EventLog(store, SystemClock())
    await log.start()
    return log


async def sequences(store: MemoryStore) -> list[int]:
    page = await store.range(keys.LOG)
    return [spb.StoredEvent.FromString(kv.value).event.sequence for kv in page.kvs]


async def test_queued_appends_commit_in_batches_of_at_most_40(store: MemoryStore) -> None:
    log = await started(store)
    try:
        answers = await asyncio.gather(*(log.append(event(data={"i": i})) for i in range(120)))
        assert [a.sequence for a in answers] == list(range(1, 121))  # queue order
        assert log.txns == 3
        assert len({a.revision for a in answers}) == 3
        assert await sequences(store) == list(range(1, 121))
        assert await log.head() == 120
    finally:
        await log.stop()


async def test_two_appenders_on_one_store_never_share_a_sequence(store: MemoryStore) -> None:
    a, b = await started(store), await started(store)
    try:
        answers = await asyncio.gather(
            *((a if i % 2 else b).append(event(data={"i": i})) for i in range(200))
        )
        assert sorted(x.sequence for x in answers) == list(range(1, 201))
        assert await sequences(store) == list(range(1, 201))
        # Sequence order is store order.
        by_sequence = sorted(answers, key=lambda x: x.sequence)
        assert [x.revision for x in by_sequence] == sorted(x.revision for x in answers)
    finally:
        await a.stop()
        await b.stop()


async def test_an_id_recorded_by_another_appender(store: MemoryStore) -> None:
    a, b = await started(store), await started(store)
    try:
        ev = event()
        first = await a.append(ev)
        same = event(eventId=ev.event_id, data={"n": 1})
        assert await b.append(same) == first
        with pytest.raises(EventIdConflict):
            await b.append(event(eventId=ev.event_id, data={"n": 2}))
        # Internal events keep the first whatever their content.
        assert await b.append(event(eventId=ev.event_id, data={"n": 3}), internal=True) == first
        assert await sequences(store) == [1]
    finally:
        await a.stop()
        await b.stop()


async def test_big_events_split_by_request_size(store: MemoryStore) -> None:
    log = await started(store)
    try:
        blob = "x" * 60_000
        answers = await asyncio.gather(
            *(log.append(event(data={"blob": blob, "i": i})) for i in range(40))
        )
        assert sorted(a.sequence for a in answers) == list(range(1, 41))
        per_txn = MAX_REQUEST_BYTES // 60_000
        assert log.txns >= 40 // per_txn
    finally:
        await log.stop()


async def test_an_event_id_is_a_key_once(store: MemoryStore) -> None:
    log = await started(store)
    try:
        ids = [str(uuid.uuid4()) for _ in range(5)]
        for event_id in ids:
            await log.append(event(eventId=event_id))
        page = await store.range(keys.IDS)
        assert sorted(kv.key for kv in page.kvs) == sorted(keys.id_key(i) for i in ids)
    finally:
        await log.stop()
