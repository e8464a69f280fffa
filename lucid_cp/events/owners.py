"""Which replica does what alone: lease-held owner keys.

Each replica holds one store lease (kept alive every ttl/3). Owning a job (a push subscription's
delivery, the retention sweep) is a create-only put of /lucid-events/owners/<name> = the replica
id under that lease: exactly one replica holds it at a time. A replica that stops revokes its
lease (its keys vanish at once); one that dies loses them when the lease expires. A watch-fed
cache of the owner keys tells the others when a key vanished, so they claim it. Writes a job
makes take ``guard(name)``: they apply only while this replica still holds the key.

When the keepalive finds the lease gone (this replica was cut off longer than the ttl), every
job it held may already run elsewhere: ``on_lost`` listeners stop them, a new lease is granted,
and the jobs are claimed again like any other free job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from lucid_cp.clock import Clock
from lucid_cp.events import keys
from lucid_cp.store.base import (
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    KeyValue,
    KeyWriter,
    LeaseNotFoundError,
    Leases,
    Put,
    WatchedPrefix,
    key_missing,
)
from lucid_cp.tasks import cancel_and_wait
from lucid_cp.watchcache import Handler, Reflector

log = logging.getLogger("lucid_cp.events.owners")


class OwnerStore(WatchedPrefix, KeyWriter, Leases, Protocol):
    """Reads, txns, leases and the watch of the owner keys."""


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
    def __init__(self, store: OwnerStore, clock: Clock, replica: str, *, ttl: int = 10) -> None:
        self.replica = replica
        self._store = store
        self._clock = clock
        self._ttl = ttl
        self.lease = 0
        self._changed_listeners: list[Callable[[], None]] = []
        self._lost_listeners: list[Callable[[], None]] = []
        self._cache: Reflector[Owner] = Reflector(
            store, keys.OWNERS, _OwnerKeys(self._changed), clock=clock, history=0, name="owners"
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.lease = (await self._store.grant_lease(self._ttl)).id
        await self._cache.start()
        self._task = asyncio.create_task(self._keepalive(), name="events-owner-lease")

    async def stop(self) -> None:
        """Releases everything at once (revokes the lease)."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
        await self._cache.stop()
        if self.lease:
            with contextlib.suppress(Exception):
                await self._store.revoke_lease(self.lease)
            self.lease = 0

    def on_change(self, listener: Callable[[], None]) -> None:
        """``listener()`` runs after every applied batch of owner-key changes."""
        self._changed_listeners.append(listener)

    def on_lost(self, listener: Callable[[], None]) -> None:
        """``listener()`` runs when the lease was found gone: stop every job."""
        self._lost_listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._changed_listeners:
            listener()

    # -- ownership ---------------------------------------------------------------------------

    def owner_of(self, name: str) -> Owner | None:
        """The holder as this replica's cache last saw it."""
        return self._cache.get(name)

    async def claim(self, name: str) -> bool:
        """Takes ``name`` if nobody holds it; True when this replica holds it now."""
        key = keys.owner_key(name)
        if not self.lease:
            return False
        try:
            result = await self._store.txn(
                [key_missing(key)], [Put(key, self.replica.encode(), self.lease)]
            )
        except LeaseNotFoundError:
            return False  # the keepalive notices and starts over
        if result.succeeded:
            return True
        return await self.holds(name)

    async def holds(self, name: str) -> bool:
        result = await self._store.txn([self.guard(name)], [])
        return result.succeeded

    async def release(self, name: str) -> None:
        key = keys.owner_key(name)
        with contextlib.suppress(Exception):
            await self._store.txn([self.guard(name)], [Delete(key)])

    def guard(self, name: str) -> Compare:
        """Holds while this replica's lease holds ``name``."""
        return Compare(keys.owner_key(name), CompareTarget.LEASE, CompareOp.EQUAL, self.lease)

    async def _keepalive(self) -> None:
        period = max(self._ttl / 3, 0.1)
        while True:
            await self._clock.sleep(period)
            try:
                await self._store.keepalive(self.lease)
            except LeaseNotFoundError:
                log.warning(
                    "events: replica lease %x expired; jobs stop and are reclaimed", self.lease
                )
                self.lease = 0
                for listener in self._lost_listeners:
                    listener()
                with contextlib.suppress(Exception):
                    self.lease = (await self._store.grant_lease(self._ttl)).id
                self._changed()
            except Exception as exc:
                log.warning("events: replica lease keepalive failed (%s); retrying", exc)
