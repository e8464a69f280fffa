"""Which control-plane replica checks which instance.

Replicas sharing one store announce themselves with a key ``/lucid/replicas/<replica-id>`` under
the process's replica lease (lucid_cp.replica_lease, kept alive there), and watch that prefix.
Every replica computes the owner of an instance the same way, by rendezvous hashing its
serviceId over the live replica ids, so each instance has exactly one checker and, when a
replica joins or dies, only that replica's share moves. A dead replica's key vanishes when its
lease expires (its ttl), and its share moves to the others at once; a replica stopping cleanly
deletes its key, handing over at once.

A replica whose own key is not in its view (lease lost, not yet re-joined) owns nothing, so it
never checks alongside the replica that took its share. It writes its key again as soon as it
misses it, under the new lease when the old one was lost. Nothing here is state another replica
depends on: the store holds the member set, the hash does the rest.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import socket
from collections.abc import Callable, Iterable
from typing import Protocol

from lucid_cp.clock import Clock
from lucid_cp.replica_lease import ReplicaLease
from lucid_cp.store.base import (
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    KeyValue,
    KeyWriter,
    LeaseNotFoundError,
    WatchedPrefix,
)
from lucid_cp.tasks import cancel_and_wait
from lucid_cp.watchcache import Handler, Reflector

log = logging.getLogger("lucid_cp.discovery.health")

PREFIX = b"/lucid/replicas/"


def _score(replica_id: str, key: str) -> int:
    digest = hashlib.blake2b(f"{replica_id}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous_owner(replicas: Iterable[str], key: str) -> str | None:
    """The replica with the highest hash for ``key`` (None when there is no replica)."""
    return max(replicas, key=lambda r: (_score(r, key), r), default=None)


class Membership(Protocol):
    replica_id: str

    @property
    def generation(self) -> int:
        """Changes whenever the member set (and so the assignment) changes."""
        ...

    def members(self) -> frozenset[str]: ...

    def owns(self, key: str) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class StaticMembership:
    """A single replica that checks everything (the sqlite and memory stores)."""

    def __init__(self, replica_id: str) -> None:
        self.replica_id = replica_id

    @property
    def generation(self) -> int:
        return 0

    def members(self) -> frozenset[str]:
        return frozenset({self.replica_id})

    def owns(self, key: str) -> bool:
        return True

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class _Replicas(Handler[bytes]):
    """The replica keys: cache key = replica id, value = its announcement (JSON, unused)."""

    def __init__(self, on_applied: Callable[[], None]) -> None:
        self._on_applied = on_applied

    def key(self, store_key: bytes) -> str | None:
        return store_key[len(PREFIX) :].decode() if store_key.startswith(PREFIX) else None

    def decode(self, key: str, kv: KeyValue) -> bytes:
        return kv.value

    def applied(self, revision: int) -> None:
        self._on_applied()


class MembershipStore(WatchedPrefix, KeyWriter, Protocol):
    """Watches the replica keys, writes its own (under the replica lease)."""


class LeaseMembership:
    """The member set is the set of keys under ``PREFIX``, followed by a watchcache reflector
    (list, watch, compaction, backoff); this class only keeps its own key there."""

    def __init__(
        self, store: MembershipStore, replica_id: str, lease: ReplicaLease, *, clock: Clock
    ) -> None:
        if "/" in replica_id or not replica_id:
            raise ValueError(f"bad replica id {replica_id!r}")
        self.replica_id = replica_id
        self._store = store
        self._lease = lease
        self._clock = clock
        self._key = PREFIX + replica_id.encode()
        self._joined = 0  # the lease our key was last written under
        self._members: frozenset[str] = frozenset()
        self._generation = 0
        self._rejoin = asyncio.Event()
        self._replicas: Reflector[bytes] = Reflector(
            store, PREFIX, _Replicas(self._refresh), clock=clock, history=0, name="health-replicas"
        )
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None

    @property
    def generation(self) -> int:
        return self._generation

    def members(self) -> frozenset[str]:
        return self._members

    def owns(self, key: str) -> bool:
        if self.replica_id not in self._members:
            return False
        return rendezvous_owner(self._members, key) == self.replica_id

    async def start(self) -> None:
        await self._lease.start()
        self._unsubscribe = self._lease.subscribe(granted=lambda _: self._rejoin.set())
        await self._join()
        await self._replicas.start()
        self._task = asyncio.create_task(self._rejoin_loop(), name="health-membership-rejoin")

    async def stop(self) -> None:
        """Leaves at once (its key deleted), so the others take over this replica's share."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        await self._replicas.stop()
        if self._joined:
            try:  # only our key under our lease (not a successor's, after a lost lease)
                held = Compare(self._key, CompareTarget.LEASE, CompareOp.EQUAL, self._joined)
                await self._store.txn([held], [Delete(self._key)])
            except Exception as exc:
                log.warning("could not delete the replica key on stop: %s", exc)
            self._joined = 0
        self._set_members(frozenset())

    async def _join(self) -> None:
        lease = self._lease.require()
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode()
        await self._store.put(self._key, info, lease=lease)
        self._joined = lease
        log.info("health-check replica %s joined (lease %x)", self.replica_id, lease)

    def _refresh(self) -> None:
        """The reflector applied a batch or a list: take its key set as the member set."""
        self._set_members(frozenset(self._replicas.keys()))
        if self.replica_id not in self._members:
            self._rejoin.set()

    def _set_members(self, members: frozenset[str]) -> None:
        if members != self._members:
            self._members = members
            self._generation += 1
            log.info("health-check replicas: %s", ", ".join(sorted(members)) or "none")

    async def _rejoin_loop(self) -> None:
        """Writes the key again whenever it is missed or a new lease replaced a lost one."""
        period = max(self._lease.ttl / 3, 0.1)
        while True:
            await self._rejoin.wait()
            self._rejoin.clear()
            try:
                await self._join()
            except LeaseNotFoundError as exc:
                # Lost: the replica lease is replaced now, and its grant sets _rejoin again.
                log.warning("replica lease %x gone; re-joining under a new one", exc.lease_id)
                self._lease.lost(exc.lease_id)
            except Exception as exc:
                log.warning("re-joining the health-check replicas failed (%s); retrying", exc)
                await self._clock.sleep(period)
                self._rejoin.set()
