"""Persists status transitions: one compare-and-swap write per transition, never one per check.

A transition is submitted with the stored health it was decided against (``base``). The writer
reads the record, and

* if it is gone (deregistered, lease expired): drops the write; the instance never comes back
  as a zombie, because the write compares the record's mod_revision (0 once deleted) and puts
  under the record's own lease;
* if its health is no longer ``base`` (a manual update or another replica wrote it): drops the
  write and reports the record, whose health then takes precedence (see ``state.adopt``);
* if the status already equals the desired one (the instance flapped back while the write
  waited): drops the write, nothing changed;
* else writes the record with the new health, keeping its lease and every other field.

A store outage never blocks the checks: pending writes wait here, newer transitions of the same
instance replace older ones (only the latest status matters), and workers retry with backoff
until the store answers again, so the latest status is written once it does.

Mass transitions (a rack going dark, a fleet starting) are batched: up to ``BATCH`` instances
share one read txn and one compare-and-swap txn, each record still guarded by its own
mod_revision.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.clock import Clock
from lucid_cp.discovery import keys
from lucid_cp.discovery.records import decode_record, encode_record
from lucid_cp.store.base import (
    MAX_TXN_OPS,
    Compare,
    Get,
    KeyValue,
    KeyWriter,
    LeaseNotFoundError,
    Put,
    TxnOp,
    mod_revision_is,
)
from lucid_cp.tasks import cancel_and_wait

log = logging.getLogger("lucid_cp.discovery.health")

BATCH = MAX_TXN_OPS // 2  # transitions per store txn, well within the store's limit
MIN_BACKOFF = 0.05
MAX_BACKOFF = 2.0


class WriteOutcome(enum.Enum):
    WRITTEN = "written"  # record: the instance as written
    SUPERSEDED = "superseded"  # record: the instance whose health someone else set
    GONE = "gone"  # record: None
    UNCHANGED = "unchanged"  # record: None


OnOutcome = Callable[[str, WriteOutcome, pb.ServiceInstance | None], None]


@dataclass(slots=True)
class _Pending:
    desired: pb.HealthStatus
    base: pb.HealthStatus


class StatusWriter:
    def __init__(
        self, store: KeyWriter, on_outcome: OnOutcome, clock: Clock, *, concurrency: int = 16
    ) -> None:
        self._store = store
        self._clock = clock
        self._on_outcome = on_outcome
        self._concurrency = concurrency
        self._pending: dict[str, _Pending] = {}
        self._inflight: dict[str, pb.HealthStatus] = {}
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._workers: list[asyncio.Task[None]] = []
        self.failures = 0  # writes that hit a store error and were retried

    @property
    def backlog(self) -> int:
        return len(self._pending)

    def pending(self, service_id: str) -> pb.HealthStatus | None:
        entry = self._pending.get(service_id)
        return entry.desired if entry is not None else None

    def inflight(self, service_id: str) -> pb.HealthStatus | None:
        """The health last sent to the store for this instance whose outcome is not yet known
        here (its watch echo may arrive first)."""
        return self._inflight.get(service_id)

    def submit(self, service_id: str, desired: pb.HealthStatus, base: pb.HealthStatus) -> None:
        entry = self._pending.get(service_id)
        if entry is None:
            self._pending[service_id] = _Pending(desired, base)
        else:
            entry.desired = desired  # only the latest transition matters; the base stays
        self._enqueue(service_id)

    def discard(self, service_id: str) -> None:
        self._pending.pop(service_id, None)
        self._inflight.pop(service_id, None)

    def _enqueue(self, service_id: str) -> None:
        if service_id not in self._queued:
            self._queued.add(service_id)
            self._queue.put_nowait(service_id)

    def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._worker(), name=f"health-writer-{n}")
            for n in range(self._concurrency)
        ]

    async def stop(self) -> None:
        workers, self._workers = self._workers, []
        await cancel_and_wait(*workers)

    async def _worker(self) -> None:
        backoff = MIN_BACKOFF
        while True:
            batch = [await self._queue.get()]
            while len(batch) < BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._queued.difference_update(batch)
            entries = {s: self._pending[s] for s in batch if s in self._pending}
            if not entries:
                continue
            try:
                retry = await self._flush(entries)
                backoff = MIN_BACKOFF
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                log.warning(
                    "health writes for %d instances failed (%s); retrying in %.2fs",
                    len(entries),
                    exc,
                    backoff,
                )
                await self._clock.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                retry = list(entries)
            for service_id in retry:
                if service_id in self._pending:
                    self._enqueue(service_id)

    async def _flush(self, entries: dict[str, _Pending]) -> list[str]:
        """One read and at most one compare-and-swap txn for a whole batch. A batch whose txn
        fails (a record changed or a lease is gone) is split and each write tried on its own.
        Returns the serviceIds that lost a race and go back to the queue."""
        ids = list(entries)
        read = await self._store.txn([], [Get(keys.instance_key(s)) for s in ids])
        compares: list[Compare] = []
        puts: list[TxnOp] = []
        sent: list[tuple[str, pb.ServiceInstance, pb.HealthStatus]] = []
        for service_id, kv in zip(ids, read.responses, strict=True):
            entry = entries[service_id]
            if not isinstance(kv, KeyValue):
                self._finish(service_id, entry, WriteOutcome.GONE, None)
                continue
            record, lease_id = decode_record(kv.value, kv.mod_revision)
            if record.health != entry.base:
                self._finish(service_id, entry, WriteOutcome.SUPERSEDED, record)
                continue
            desired = entry.desired
            if desired.status == record.health.status:
                self._finish(service_id, entry, WriteOutcome.UNCHANGED, None)
                continue
            record.health.CopyFrom(desired)
            record.status = desired.status
            record.last_health_check.CopyFrom(desired.last_check)
            key = keys.instance_key(service_id)
            compares.append(mod_revision_is(key, kv.mod_revision))
            puts.append(Put(key, encode_record(record, lease_id), lease_id))
            sent.append((service_id, record, desired))
            self._inflight[service_id] = desired
        if not sent:
            return []
        try:
            result = await self._store.txn(compares, puts)
        except LeaseNotFoundError:
            if len(sent) == 1:
                self._finish(sent[0][0], entries[sent[0][0]], WriteOutcome.GONE, None)
                return []
            result = None
        if result is not None and result.succeeded:
            for service_id, record, desired in sent:
                record.revision = result.revision
                self._finish(service_id, entries[service_id], WriteOutcome.WRITTEN, record, desired)
            return []
        if len(sent) == 1:
            return [sent[0][0]]  # the record changed since the read: read it again
        retry: list[str] = []
        for service_id, _, _ in sent:
            retry += await self._flush({service_id: entries[service_id]})
        return retry

    def _finish(
        self,
        service_id: str,
        entry: _Pending,
        outcome: WriteOutcome,
        record: pb.ServiceInstance | None,
        sent: pb.HealthStatus | None = None,
    ) -> None:
        self._inflight.pop(service_id, None)
        if self._pending.get(service_id) is not entry:
            return  # discarded meanwhile: the instance was dropped or its health adopted
        if outcome is WriteOutcome.WRITTEN and record is not None and entry.desired is not sent:
            # A newer transition arrived during the write: it now builds on what was written.
            entry.base = record.health
            self._enqueue(service_id)
        else:
            del self._pending[service_id]
        self._on_outcome(service_id, outcome, record)
