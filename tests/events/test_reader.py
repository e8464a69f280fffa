"""The reader on its own (memory store): a gap met on a later page of one scan is told from the
caller's cursor, not from where the scan had got to."""

from __future__ import annotations

import pytest

from lucid_cp.api.lucid.messaging.v1 import events_pb2 as pb
from lucid_cp.clock import SystemClock
from lucid_cp.events.errors import CursorBehindRetention
from lucid_cp.events.log import READ_PAGE, EventLog
from lucid_cp.events.matching import Matcher
from lucid_cp.events.reader import EventReader
from lucid_cp.events.retention import Sweeper
from lucid_cp.events.tail import LogTail
from lucid_cp.store.memory import MemoryStore

from .conftest import event, subscription


class _SweptAfterFirstPage(EventLog):
    """Retention runs right after the first page of a scan has been read."""

    sweeper: Sweeper | None = None

    async def read(self, after: int, limit: int = READ_PAGE) -> tuple[list[pb.ServiceEvent], bool]:
        page = await super().read(after, limit)
        sweeper, self.sweeper = self.sweeper, None
        if sweeper is not None:
            await sweeper.sweep()
        return page


async def test_a_gap_between_the_pages_of_one_scan_counts_from_the_cursor() -> None:
    store, clock = MemoryStore(), SystemClock()
    log = _SweptAfterFirstPage(store, clock)
    await log.start()
    try:
        for i in range(150):
            await log.append(event(data={"i": i}))
        reader = EventReader(log, LogTail(store, clock))
        log.sweeper = Sweeper(store, None, clock, count=30, seconds=3600, interval=3600)
        with pytest.raises(CursorBehindRetention) as caught:
            # The first page (1..100) matches; then 1..120 are deleted: a gap after 100.
            await reader.matching(0, 1000, Matcher.of(subscription(">")), fresh=True)
        gap = caught.value
        assert (gap.lost, gap.resume_cursor) == (120, 120)
        assert gap.details["cursor"] == 0
    finally:
        await log.stop()
        await store.close()
