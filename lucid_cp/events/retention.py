"""Retention: one replica at a time (the owner key "retention") deletes the oldest events once
there are more than ``count`` or they were appended more than ``seconds`` ago, and records the
oldest retained sequence at /lucid-events/retention, in the same txn as the deletions (up to
60 events per txn: their log and id records). Readers compare cursors with that record: a cursor
behind it is a gap (CursorBehindRetention), never a silent skip."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from lucid_cp.api.lucid.messaging.v1 import event_storage_pb2 as spb
from lucid_cp.clock import Clock
from lucid_cp.events import keys
from lucid_cp.events.owners import Owners
from lucid_cp.store.base import (
    Delete,
    KeyReader,
    KeyWriter,
    Put,
    StoreError,
    key_missing,
    mod_revision_is,
)
from lucid_cp.tasks import cancel_and_wait

log = logging.getLogger("lucid_cp.events.retention")

# Events deleted per txn: two deletes each, plus the retention record, within MAX_TXN_OPS.
PER_TXN = 60


class RetentionStore(KeyReader, KeyWriter, Protocol):
    """Reads and txns."""


class Sweeper:
    def __init__(
        self,
        store: RetentionStore,
        owners: Owners | None,
        clock: Clock,
        *,
        count: int,
        seconds: float,
        interval: float,
    ) -> None:
        if count < 1 or seconds <= 0 or interval <= 0:
            raise ValueError("retention count, seconds and interval must be positive")
        self._store = store
        self._owners = owners
        self._clock = clock
        self.count = count
        self.seconds = seconds
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self.deleted = 0  # events deleted by this replica (metrics, tests)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="events-retention")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _run(self) -> None:
        while True:
            await self._clock.sleep(self._interval)
            try:
                if self._owners is None or await self._owners.claim(keys.RETENTION_OWNER):
                    await self.sweep()
            except StoreError as exc:
                log.warning(
                    "events retention: sweep failed (%s); next in %.0fs", exc, self._interval
                )

    async def sweep(self) -> int:
        """Deletes what is beyond retention now; returns how many events."""
        deleted = 0
        while True:
            head_kv, retention_kv = (
                await self._store.get(keys.HEAD),
                await self._store.get(keys.RETENTION),
            )
            head = keys.parse_int(head_kv.value if head_kv else None, 0)
            oldest = keys.parse_int(retention_kv.value if retention_kv else None, 1)
            keep_from = head - self.count + 1  # by count, sequences below this go
            cutoff_ns = int((self._clock.now() - self.seconds) * 1e9)
            page = await self._store.range(keys.LOG, start=keys.log_key(oldest), limit=PER_TXN)
            doomed: list[tuple[int, str]] = []
            for kv in page.kvs:
                stored = spb.StoredEvent.FromString(kv.value)
                sequence = stored.event.sequence
                if sequence >= keep_from and stored.appended_at.ToNanoseconds() >= cutoff_ns:
                    break
                doomed.append((sequence, stored.event.event_id))
            if not doomed:
                return deleted
            new_oldest = doomed[-1][0] + 1
            ops: list[Put | Delete] = []
            for sequence, event_id in doomed:
                ops += [Delete(keys.log_key(sequence)), Delete(keys.id_key(event_id))]
            ops.append(Put(keys.RETENTION, str(new_oldest).encode()))
            guard = (
                mod_revision_is(keys.RETENTION, retention_kv.mod_revision)
                if retention_kv is not None
                else key_missing(keys.RETENTION)
            )
            result = await self._store.txn([guard], ops)
            if result.succeeded:
                deleted += len(doomed)
                self.deleted += len(doomed)
