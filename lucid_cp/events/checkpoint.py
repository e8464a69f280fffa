"""The service feed's checkpoint (/lucid-events/feed/services, FeedCheckpoint): which instances
the feed has reported, so a replica that starts can report what changed while no replica was
publishing (a single replica's restart, or every replica down at once).

What it holds follows the STORED events, not the watch: an instance enters when its
service.registered is stored and leaves when its removal (deregistered or expired) is; the
feed tells it so from the publisher's answers, in append order. So a checkpoint never claims an
event that a crash lost; at worst it lags the log by one write interval, and a start repeats
what happened in that interval (a registration under its id, kept once, unless the instance
was written since; a removal under the start's snapshot revision, so once more).

Written at most every ``interval`` seconds while something changed, and once more at the stop
(after the publisher has appended what it held). Replicas share it: a compare-and-swap write
that finds another replica's checkpoint of a newer revision leaves it. More than ``max_bytes``
(1 MiB, about 11,000 instances) is written as ``overflow``: a start then reports nothing, as
without a checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from lucid_cp.api.lucid.messaging.v1 import event_storage_pb2 as spb
from lucid_cp.clock import Clock
from lucid_cp.events import keys
from lucid_cp.store.base import (
    Get,
    KeyReader,
    KeyValue,
    KeyWriter,
    Put,
    StoreError,
    key_missing,
    mod_revision_is,
)
from lucid_cp.tasks import cancel_and_wait

log = logging.getLogger("lucid_cp.events.checkpoint")

# Seconds between two writes of the checkpoint at most.
INTERVAL = 1.0
# The checkpoint's size at most (the store takes 1.5 MiB per request).
MAX_BYTES = 1024 * 1024
_CAS_ATTEMPTS = 4


class CheckpointStore(KeyReader, KeyWriter, Protocol):
    """The store methods the checkpoint uses: reads and txns."""


class Checkpoint:
    def __init__(
        self,
        store: CheckpointStore,
        clock: Clock,
        *,
        interval: float = INTERVAL,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self._store = store
        self._clock = clock
        self._interval = interval
        self._max_bytes = max_bytes
        # What the stored events reported: serviceId -> serviceName, as of _revision.
        self._instances: dict[str, str] = {}
        self._revision = 0
        # The checkpoint found at the start (None: none, or an overflow).
        self.loaded: dict[str, str] | None = None
        self._mod = 0  # mod_revision of the stored checkpoint as last seen (0: absent)
        self._version = 0  # changes so far
        self._saved = 0  # the version last written (or found superseded in the store)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.writes = 0  # checkpoints written (tests)

    async def start(self) -> None:
        kv = await self._store.get(keys.FEED_CHECKPOINT)
        if kv is not None:
            self._mod = kv.mod_revision
            stored = spb.FeedCheckpoint.FromString(kv.value)
            if not stored.overflow:
                self.loaded = {i.service_id: i.service_name for i in stored.instances}
                self._instances = dict(self.loaded)
                self._revision = stored.revision
        self._task = asyncio.create_task(self._run(), name="events-feed-checkpoint")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        if self._saved != self._version:
            try:
                await self._write()
            except StoreError as exc:
                log.warning("events feed: the checkpoint was not written at the stop (%s)", exc)

    # -- what the feed reports ---------------------------------------------------------------

    def reset(self, instances: dict[str, str], revision: int) -> None:
        """Starts from ``instances`` (a start without a usable checkpoint: nothing to report)."""
        self._instances = dict(instances)
        self._changed(revision)

    def registered(self, service_id: str, service_name: str, revision: int) -> None:
        """service.registered of ``service_id`` is stored."""
        self._instances[service_id] = service_name
        self._changed(revision)

    def removed(self, service_id: str, revision: int) -> None:
        """The removal of ``service_id`` is stored."""
        self._instances.pop(service_id, None)
        self._changed(revision)

    def _changed(self, revision: int) -> None:
        self._revision = max(self._revision, revision)
        self._version += 1
        self._wake.set()

    # -- writing -----------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._saved != self._version:
                try:
                    await self._write()
                except StoreError as exc:
                    log.warning("events feed: checkpoint not written (%s); retrying", exc)
                    self._wake.set()
            await self._clock.sleep(self._interval)

    def _encode(self) -> bytes:
        record = spb.FeedCheckpoint(revision=self._revision)
        for service_id, service_name in sorted(self._instances.items()):
            record.instances.add(service_id=service_id, service_name=service_name)
        if record.ByteSize() > self._max_bytes:
            log.warning(
                "events feed: %d instances are over the checkpoint's %d bytes: a start will "
                "not report what changed while it was down",
                len(self._instances),
                self._max_bytes,
            )
            record = spb.FeedCheckpoint(revision=self._revision, overflow=True)
        return record.SerializeToString()

    async def _write(self) -> None:
        """Writes the checkpoint unless one of a newer revision is stored."""
        version, value, revision = self._version, self._encode(), self._revision
        for _ in range(_CAS_ATTEMPTS):
            guard = (
                mod_revision_is(keys.FEED_CHECKPOINT, self._mod)
                if self._mod
                else key_missing(keys.FEED_CHECKPOINT)
            )
            result = await self._store.txn(
                [guard], [Put(keys.FEED_CHECKPOINT, value)], [Get(keys.FEED_CHECKPOINT)]
            )
            if result.succeeded:
                self._mod = result.revision
                self._saved = version
                self.writes += 1
                return
            current = result.responses[0]
            if not isinstance(current, KeyValue):
                self._mod = 0
                continue
            self._mod = current.mod_revision
            if spb.FeedCheckpoint.FromString(current.value).revision > revision:
                self._saved = version  # another replica's is newer: ours would go back
                return
        log.warning("events feed: the checkpoint kept changing under this replica's writes")
