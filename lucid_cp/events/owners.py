"""Which replica does what alone: lease-held owner keys.

Owning a job (a push subscription's delivery, the retention sweep) is a create-only put of
/lucid-events/owners/<name> = the replica id under the replica lease (lucid_cp.replica_lease,
one per process): exactly one replica holds it at a time. A replica that stops deletes the keys
it holds (they vanish at once); one that dies loses them when the lease expires. A watch-fed
cache of the owner keys tells the others when a key vanished, so they claim it. Writes a job
makes take ``guard(name)``: they apply only while this replica still holds the key.

When the replica lease is found gone (this replica was cut off longer than the ttl), every job
it held may already run elsewhere: ``on_lost`` listeners stop them, and once a new lease is
granted the jobs are claimed again like any other free job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from lucid_cp.clock import Clock
from lucid_cp.events import keys
from lucid_cp.replica_lease import ReplicaLease
from lucid_cp.store.base import (
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    KeyValue,
    KeyWriter,
    LeaseNotFoundError,
    Put,
    WatchedPrefix,
    key_missing,
)
from lucid_cp.watchcache import Handler, Reflector

log = logging.getLogger("lucid_cp.events.owners")

# Owner keys deleted at once at stop (one guarded txn each).
RELEASE_CONCURRENCY = 64


class OwnerStore(WatchedPrefix, KeyWriter, Protocol):
    """Reads, txns and the watch of the owner keys."""


@dataclass(frozen=True, slots=True)
class Owner:
    replica: str
    lease: int


class _OwnerKeys(Handler[Owner]):
    def __init__(self, changed: Callable[[], None]) -> None:
        self._changed = changed

    def key(self, store_key: bytes) -> str | None:
        if not store_key.startswith(keys.OWNERS):
            return None
        return store_key[len(keys.OWNERS) :].decode()

    def decode(self, key: str, kv: KeyValue) -> Owner:
        return Owner(kv.value.decode(), kv.lease)

    def applied(self, revision: int) -> None:
        self._changed()


class Owners:
    def __init__(
        self, store: OwnerStore, clock: Clock, replica: str, *, lease: ReplicaLease
    ) -> None:
        self.replica = replica
        self._store = store
        self._clock = clock
        self._lease = lease
        self._held: set[str] = set()  # claimed and not released since (the cache may lag)
        self._changed_listeners: list[Callable[[], None]] = []
        self._lost_listeners: list[Callable[[], None]] = []
        self._cache: Reflector[Owner] = Reflector(
            store, keys.OWNERS, _OwnerKeys(self._changed), clock=clock, history=0, name="owners"
        )
        self._unsubscribe: Callable[[], None] | None = None

    @property
    def lease(self) -> int:
        """The replica lease the owner keys go under (0 while a lost one is being replaced)."""
        return self._lease.id

    async def start(self) -> None:
        await self._lease.start()
        self._unsubscribe = self._lease.subscribe(
            lost=self._lost, granted=lambda _: self._changed()
        )
        await self._cache.start()

    async def stop(self) -> None:
        """Releases everything at once (deletes the owner keys this replica holds)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        lease = self.lease
        mine = {name for name, owner in self._cache.items() if lease and owner.lease == lease}
        await self._cache.stop()
        await self._release_all(sorted(self._held | mine))
        self._held.clear()

    def on_change(self, listener: Callable[[], None]) -> None:
        """``listener()`` runs after every applied batch of owner-key changes."""
        self._changed_listeners.append(listener)

    def on_lost(self, listener: Callable[[], None]) -> None:
        """``listener()`` runs when the lease was found gone: stop every job."""
        self._lost_listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._changed_listeners:
            listener()

    def _lost(self) -> None:
        log.warning("events: replica lease lost; jobs stop and are reclaimed")
        self._held.clear()
        for listener in self._lost_listeners:
            listener()

    # -- ownership ---------------------------------------------------------------------------

    def owner_of(self, name: str) -> Owner | None:
        """The holder as this replica's cache last saw it."""
        return self._cache.get(name)

    async def claim(self, name: str) -> bool:
        """Takes ``name`` if nobody holds it; True when this replica holds it now."""
        key = keys.owner_key(name)
        lease = self.lease
        if not lease:
            return False
        try:
            result = await self._store.txn(
                [key_missing(key)], [Put(key, self.replica.encode(), lease)]
            )
        except LeaseNotFoundError:
            self._lease.lost(lease)  # replaced now; then every job is claimed again
            return False
        if result.succeeded or await self.holds(name):
            self._held.add(name)
            return True
        return False

    async def holds(self, name: str) -> bool:
        result = await self._store.txn([self.guard(name)], [])
        return result.succeeded

    async def release(self, name: str) -> None:
        key = keys.owner_key(name)
        self._held.discard(name)
        with contextlib.suppress(Exception):
            await self._store.txn([self.guard(name)], [Delete(key)])

    async def _release_all(self, names: Iterable[str]) -> None:
        batch = list(names)
        for start in range(0, len(batch), RELEASE_CONCURRENCY):
            chunk = batch[start : start + RELEASE_CONCURRENCY]
            await asyncio.gather(*(self.release(name) for name in chunk))

    def guard(self, name: str) -> Compare:
        """Holds while this replica's lease holds ``name``."""
        return Compare(keys.owner_key(name), CompareTarget.LEASE, CompareOp.EQUAL, self.lease)
