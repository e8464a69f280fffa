"""Which control-plane replica checks which instance.

Replicas sharing one store announce themselves with a key ``/lucid/replicas/<replica-id>`` under
a short lease they keep alive, and watch that prefix. Every replica computes the owner of an
instance the same way, by rendezvous hashing its serviceId over the live replica ids, so each
instance has exactly one checker and, when a replica joins or dies, only that replica's share
moves. A dead replica's key vanishes when its lease expires (``ttl`` seconds), and its share
moves to the others at once; a replica stopping cleanly revokes its lease, handing over at once.

A replica whose own key is not in its view (lease lost, not yet re-joined) owns nothing, so it
never checks alongside the replica that took its share. Nothing here is state another replica
depends on: the store holds the member set, the hash does the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
from collections.abc import Callable, Iterable
from typing import Protocol

from lucid_cp.clock import Clock
from lucid_cp.store.base import KeyValue, KeyWriter, LeaseNotFoundError, Leases, WatchedPrefix
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


class MembershipStore(WatchedPrefix, KeyWriter, Leases, Protocol):
    """Watches the replica keys, writes its own under a lease it keeps alive."""


class LeaseMembership:
    """The member set is the set of keys under ``PREFIX``, followed by a watchcache reflector
    (list, watch, compaction, backoff); this class only keeps its own key alive."""

    def __init__(
        self, store: MembershipStore, replica_id: str, ttl: int = 3, *, clock: Clock
    ) -> None:
        if "/" in replica_id or not replica_id:
            raise ValueError(f"bad replica id {replica_id!r}")
        self.replica_id = replica_id
        self._store = store
        self._ttl = ttl
        self._clock = clock
        self._key = PREFIX + replica_id.encode()
        self._lease = 0
        self._members: frozenset[str] = frozenset()
        self._generation = 0
        self._rejoin = asyncio.Event()
        self._replicas: Reflector[bytes] = Reflector(
            store, PREFIX, _Replicas(self._refresh), clock=clock, history=0, name="health-replicas"
        )
        self._keepalive: asyncio.Task[None] | None = None

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
        await self._join()
        await self._replicas.start()
        self._keepalive = asyncio.create_task(
            self._keepalive_loop(), name="health-membership-keepalive"
        )

    async def stop(self) -> None:
        """Leaves at once (lease revoked), so the others take over this replica's share."""
        task, self._keepalive = self._keepalive, None
        await cancel_and_wait(task)
        await self._replicas.stop()
        if self._lease:
            try:
                await self._store.revoke_lease(self._lease)
            except Exception as exc:
                log.warning("could not revoke replica lease on stop: %s", exc)
            self._lease = 0
        self._set_members(frozenset())

    async def _join(self) -> None:
        lease = await self._store.grant_lease(self._ttl)
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode()
        await self._store.put(self._key, info, lease=lease.id)
        self._lease = lease.id
        log.info("health-check replica %s joined (lease %x)", self.replica_id, lease.id)

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

    async def _keepalive_loop(self) -> None:
        period = max(self._ttl / 3, 0.1)
        while True:
            with contextlib.suppress(TimeoutError):
                async with self._clock.timeout(period):
                    await self._rejoin.wait()
            try:
                if self._rejoin.is_set():
                    self._rejoin.clear()
                    await self._join()
                else:
                    await self._store.keepalive(self._lease)
            except LeaseNotFoundError:
                log.warning("replica lease %x expired; re-joining", self._lease)
                self._rejoin.set()
            except Exception as exc:
                log.warning("replica keepalive failed (%s); retrying", exc)
