"""Read-your-writes that cannot be honoured is said (a WARNING with the revision) and counted."""

from __future__ import annotations

import asyncio
import logging

import pytest

from lucid_cp.auth.tokens import Principal, Role
from lucid_cp.discovery.index import InstanceIndex
from lucid_cp.discovery.registry import READ_YOUR_WRITES_TIMEOUT, Registry
from tests.watchcache.fakes import ControlledStore, RecordingClock, eventually

from .conftest import registration

ADMIN = Principal("ops-admin", Role.ADMIN)


async def test_a_write_the_index_does_not_apply_in_time_is_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = ControlledStore()
    clock = RecordingClock()
    index = InstanceIndex(store, clock=clock)
    await index.start()
    registry = Registry(store, index, clock)
    try:
        assert await registry.register(ADMIN, registration(ttl=30))  # applied in time: nothing said
        assert index.read_your_writes_timeouts == 0
        store.go_down()  # the index's watch breaks; writes still reach the store
        await eventually(lambda: clock.sleepers == 1 and not index.connected)  # backing off
        with caplog.at_level(logging.WARNING, "lucid_cp.discovery.registry"):
            writing = asyncio.create_task(registry.register(ADMIN, registration(ttl=30)))
            await eventually(lambda: clock.sleepers == 2)  # and the read-your-writes deadline
            clock.advance(READ_YOUR_WRITES_TIMEOUT)
            response = await asyncio.wait_for(writing, 5)
        assert index.read_your_writes_timeouts == 1
        assert index.revision < response.revision
        [record] = [r for r in caplog.records if r.name == "lucid_cp.discovery.registry"]
        assert record.levelno == logging.WARNING and str(response.revision) in record.getMessage()
    finally:
        await index.stop()
        await store.close()
