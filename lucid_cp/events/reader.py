"""Reading the log for a subscription: from this replica's tail when it holds the events (the
followers at the head), from the store otherwise (catching up, and every pull), with the
subscription's matcher applied. Gaps (retention) are raised by the store read, never skipped."""

from __future__ import annotations

from dataclasses import dataclass

from lucid_cp.api.lucid.messaging.v1 import events_pb2 as pb
from lucid_cp.events.errors import CursorBehindRetention
from lucid_cp.events.log import READ_PAGE, EventLog
from lucid_cp.events.matching import Matcher
from lucid_cp.events.tail import LogTail

# What one batch handed out (pull, push) may carry: well under gRPC's 4 MiB message limit.
BATCH_OUT_BYTES = 2 * 1024 * 1024
# Events examined by one pull or push round at most (the rest did not match: the cursor
# still moves past them).
MAX_SCAN = 10 * READ_PAGE


@dataclass(slots=True)
class Batch:
    """Matching events after a cursor. ``cursor``: the last sequence examined (the value to ack);
    ``more``: events after it already exist."""

    events: list[pb.ServiceEvent]
    cursor: int
    more: bool


class EventReader:
    def __init__(self, log: EventLog, tail: LogTail) -> None:
        self.log = log
        self.tail = tail

    async def read(
        self, after: int, limit: int = READ_PAGE, *, fresh: bool = False
    ) -> tuple[list[pb.ServiceEvent], bool]:
        """(events after ``after`` in order, at most ``limit``; whether more follow). ``fresh``:
        from the store (what is stored now, even if this replica's tail lags); otherwise from
        the tail when it reaches back to after + 1. The messages may be shared: do not change
        them."""
        if not fresh:
            recent = self.tail.recent(after, limit)
            if recent:
                return recent, self.tail.head > recent[-1].sequence
            if recent is not None and self.tail.head <= after:
                return [], False
        return await self.log.read(after, limit)

    async def matching(
        self,
        after: int,
        max_events: int,
        matcher: Matcher,
        *,
        fresh: bool = False,
        max_scan: int = MAX_SCAN,
        max_bytes: int = BATCH_OUT_BYTES,
    ) -> Batch:
        """Up to ``max_events`` events after ``after`` that ``matcher`` wants, examining at
        most ``max_scan`` events and handing out at most ``max_bytes`` (at least one event).
        A gap met on a later page (retention deleted events between two reads) is raised as
        seen from ``after``: what this scan had collected is deleted too, so ``lost`` and
        ``resumeCursor`` count from the caller's cursor, not from where the scan was."""
        batch = Batch([], after, False)
        scanned = size = 0
        while scanned < max_scan:
            try:
                events, more = await self.read(
                    batch.cursor, min(READ_PAGE, max_scan - scanned), fresh=fresh
                )
            except CursorBehindRetention as gap:
                if batch.cursor == after:
                    raise
                raise gap.since(after) from None
            if not events:
                batch.more = False
                return batch
            for index, event in enumerate(events):
                if matcher.matches(event):
                    if batch.events and size + event.ByteSize() > max_bytes:
                        batch.more = True
                        return batch
                    batch.events.append(event)
                    size += event.ByteSize()
                batch.cursor = event.sequence
                scanned += 1
                if len(batch.events) >= max_events:
                    batch.more = more or index < len(events) - 1
                    return batch
            batch.more = more
            if not more:
                return batch
        return batch

    async def wait_beyond(self, sequence: int) -> None:
        await self.tail.wait_beyond(sequence)
