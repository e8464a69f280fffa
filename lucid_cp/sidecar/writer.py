"""The replica's writes of sidecar status: batched, bounded, never on a stream's hot path.

What it writes (keys in ``keys.py``):
- session records, latest value wins: on connect, ACK, NACK, a change of the sidecar's own
  health, disconnect, and once a minute with its usage. Under the instance's store lease.
- usage records: one per sidecar per completed minute (``usage.py``), plus the deletion of the
  record of the same minute a day earlier (24 h retention). Under the instance's lease.
- this replica's progress record, only when its evaluated revision advanced. Under the
  replica lease (lucid_cp.replica_lease; written again under a new one when it was lost) and
  deleted on stop: this replica's sessions then read as disconnected on every replica at once.

Pending writes are flushed every ``interval`` seconds in store txns of at most
``MAX_TXN_OPS`` ops. A write whose instance lease is gone is dropped (the instance, and so its
sidecar's records, are gone for good). On a store error the batch stays pending and the flush
is retried with backoff: a store outage delays status, it never loses the latest value.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from lucid_cp.api.lucid.sidecar.v1 import storage_pb2 as spb
from lucid_cp.clock import Clock
from lucid_cp.replica_lease import ReplicaLease
from lucid_cp.sidecar import keys
from lucid_cp.store.base import (
    MAX_REQUEST_BYTES,
    MAX_TXN_OPS,
    OP_OVERHEAD_BYTES,
    Delete,
    KeyWriter,
    LeaseNotFoundError,
    Put,
)
from lucid_cp.tasks import cancel_and_wait

log = logging.getLogger("lucid_cp.sidecar.writer")

DAY_MINUTES = 24 * 60


class WriterStore(KeyWriter, Protocol):
    """Txns (never reads or watches)."""


@dataclass(slots=True)
class _Write:
    value: bytes | None  # None: delete
    lease: int  # 0: the replica lease


class StatusWriter:
    def __init__(
        self,
        store: WriterStore,
        lease_of: Callable[[str], int],
        replica: str,
        *,
        lease: ReplicaLease,
        clock: Clock,
        interval: float = 0.05,
    ) -> None:
        self.replica = replica
        self._store = store
        self._lease_of = lease_of
        self._lease = lease
        self._clock = clock
        self._interval = interval
        self._unsubscribe: Callable[[], None] | None = None
        self._pending: dict[bytes, _Write] = {}
        self._in_flight = 0  # flushes under way: their batch is out of _pending, not yet written
        self._wake = asyncio.Event()
        self._flushed = asyncio.Event()
        self._progress = 0
        self._progress_record: bytes | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.failures = 0  # flushes that failed (store errors), for the metrics

    @property
    def backlog(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        await self._lease.start()
        self._unsubscribe = self._lease.subscribe(granted=self._lease_replaced)
        self._tasks = [asyncio.create_task(self._flush_loop(), name="sidecar-status-writer")]

    async def stop(self) -> None:
        """Writes what is pending, with the deletion of this replica's progress record (one
        attempt: the store's own deadlines bound it)."""
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(*tasks)
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._progress_record is not None:  # the replica leaves: its sessions read as such
            self._pending[keys.replica_key(self.replica)] = _Write(None, 0)
            self._progress_record = None
        try:
            await self._flush()
        except Exception as exc:
            log.warning("sidecar status: %d writes lost at stop (%s)", len(self._pending), exc)

    # -- what to write -----------------------------------------------------------------------

    def session(self, record: spb.SidecarSession) -> None:
        self._queue(keys.session_key(record.service_id), record.SerializeToString(), record)

    def usage(self, record: spb.UsageMinute) -> None:
        name, sid = record.service_name, record.service_id
        key = keys.usage_key(name, sid, record.minute, record.stream)
        value = spb.UsageMinute()
        value.CopyFrom(record)
        for named_by_key in ("service_id", "service_name", "minute", "stream"):
            value.ClearField(named_by_key)  # the key says them: ~110 bytes less per record
        self._queue(key, value.SerializeToString(), record)
        old = keys.usage_minute_prefix(name, sid, record.minute - DAY_MINUTES)
        self._pending.setdefault(old, _Write(None, 0))  # every stream's record of that minute

    def progress(self, evaluated: int, sidecars: int, *, force: bool = False) -> None:
        """The replica has evaluated every change up to ``evaluated``."""
        if evaluated <= self._progress or (sidecars == 0 and self._progress and not force):
            return  # with no sidecar connected, only liveness matters: written once
        self._progress = evaluated
        record = spb.ReplicaProgress(
            replica=self.replica, evaluated_revision=evaluated, sidecars=sidecars
        )
        record.updated_at.FromNanoseconds(int(self._clock.now() * 1e9))
        self._progress_record = record.SerializeToString()
        self._pending[keys.replica_key(self.replica)] = _Write(self._progress_record, 0)
        self._wake.set()

    def _queue(
        self, key: bytes, value: bytes, record: spb.SidecarSession | spb.UsageMinute
    ) -> None:
        lease = self._lease_of(record.service_id)
        if lease == 0:
            return  # the instance is gone: so are its records
        self._pending[key] = _Write(value, lease)
        self._wake.set()

    async def drain(self) -> None:
        """Returns once everything queued so far is written (tests, stop)."""
        while self._pending or self._in_flight:
            self._flushed.clear()
            self._wake.set()
            await self._flushed.wait()

    # -- flushing ----------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        delay = self._interval
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._clock.sleep(self._interval)  # gather what arrives meanwhile
            try:
                await self._flush()
            except Exception as exc:
                self.failures += 1
                log.warning("sidecar status write failed (%s); retrying in %.1fs", exc, delay)
                await self._clock.sleep(delay)
                delay = min(delay * 2, 5.0)
                self._wake.set()
                continue
            delay = self._interval
            self._flushed.set()

    async def _flush(self) -> None:
        batch, self._pending = self._pending, {}
        items = list(batch.items())
        self._in_flight += 1
        try:
            while items:
                chunk = _chunk(items)
                ops = [
                    Put(k, w.value, w.lease or self._lease.require())
                    if w.value is not None
                    else Delete(k, prefix=k.endswith(b"/"))
                    for k, w in chunk
                ]
                try:
                    await self._store.txn([], ops)
                except LeaseNotFoundError as exc:
                    if exc.lease_id == self._lease.id:  # the replica lease expired: replaced
                        self._lease.lost(exc.lease_id)  # now, and the write retried after
                        raise
                    items = [(k, w) for k, w in items if w.lease != exc.lease_id]
                    continue
                items = items[len(chunk) :]
        except BaseException:
            for key, write in items:  # keep what was not written, unless replaced meanwhile
                self._pending.setdefault(key, write)
            raise
        finally:
            self._in_flight -= 1

    def _lease_replaced(self, lease: int) -> None:
        """A new replica lease replaced a lost one: the progress record goes back under it."""
        if self._progress_record is not None:
            self._pending.setdefault(
                keys.replica_key(self.replica), _Write(self._progress_record, 0)
            )
            self._wake.set()


def _chunk(items: list[tuple[bytes, _Write]]) -> list[tuple[bytes, _Write]]:
    """The longest prefix of ``items`` that fits one txn (op count and request size)."""
    size = 0
    for i, (key, write) in enumerate(items[:MAX_TXN_OPS]):
        size += len(key) + len(write.value or b"") + OP_OVERHEAD_BYTES
        if size > MAX_REQUEST_BYTES and i > 0:
            return items[:i]
    return items[:MAX_TXN_OPS]
