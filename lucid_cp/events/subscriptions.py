"""Subscriptions: their store records and the watch-fed index that serves Get, List and the push
loops. Pure asyncio over narrow store interfaces; it never imports grpc.

A record (/lucid-events/subscriptions/<id>) is the EventSubscriptionResponse as stored: the
subscription with its defaults, createdAt, the cursor and the dead batches; ``revision`` (its
mod_revision) and ``head`` are filled on read. Records change only by moving the cursor forward
(ack, push progress) and by appending dead batches, each a compare-and-swap on mod_revision.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from lucid_cp.api.lucid.messaging.v1 import delivery_pb2
from lucid_cp.api.lucid.messaging.v1 import events_pb2 as pb
from lucid_cp.clock import Clock
from lucid_cp.errors import Conflict
from lucid_cp.events import keys
from lucid_cp.events.errors import SubscriptionNotFound
from lucid_cp.store.base import (
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    KeyReader,
    KeyValue,
    KeyWriter,
    Put,
    WatchedPrefix,
    key_missing,
    mod_revision_is,
)
from lucid_cp.watchcache import Handler, Reflector

CAS_ATTEMPTS = 16
MAX_DEAD_BATCHES = 100


class SubscriptionStore(KeyReader, KeyWriter, Protocol):
    """The store methods subscription writes use."""


def not_found(subscription_id: str) -> SubscriptionNotFound:
    return SubscriptionNotFound(
        f"no event subscription {subscription_id}",
        details={"subscriptionId": subscription_id},
    )


def decode(kv: KeyValue) -> pb.EventSubscriptionResponse:
    record = pb.EventSubscriptionResponse.FromString(kv.value)
    record.revision = kv.mod_revision
    return record


def encode(record: pb.EventSubscriptionResponse) -> bytes:
    stored = pb.EventSubscriptionResponse()
    stored.CopyFrom(record)
    stored.head = 0
    stored.revision = 0
    return stored.SerializeToString()


def is_push(record: pb.EventSubscriptionResponse) -> bool:
    return record.subscription.delivery_mode == delivery_pb2.DELIVERY_MODE_PUSH


class _Records(Handler[pb.EventSubscriptionResponse]):
    def __init__(self, changed: Callable[[], None]) -> None:
        self._changed = changed

    def key(self, store_key: bytes) -> str | None:
        if not store_key.startswith(keys.SUBSCRIPTIONS):
            return None
        return store_key[len(keys.SUBSCRIPTIONS) :].decode()

    def decode(self, key: str, kv: KeyValue) -> pb.EventSubscriptionResponse:
        record = decode(kv)
        if record.subscription_id != key:
            raise ValueError(f"the record holds subscriptionId {record.subscription_id!r}")
        return record

    def applied(self, revision: int) -> None:
        self._changed()


class SubscriptionIndex:
    """Every subscription, in memory (they are few and small; events are not kept here)."""

    def __init__(self, store: WatchedPrefix, *, clock: Clock) -> None:
        self._listeners: list[Callable[[], None]] = []
        self._cache: Reflector[pb.EventSubscriptionResponse] = Reflector(
            store,
            keys.SUBSCRIPTIONS,
            _Records(self._changed),
            clock=clock,
            history=100,
            name="event-subscriptions",
        )
        self.read_your_writes_timeouts = 0

    async def start(self) -> None:
        await self._cache.start()

    async def stop(self) -> None:
        await self._cache.stop()

    @property
    def revision(self) -> int:
        return self._cache.revision

    def __len__(self) -> int:
        return len(self._cache)

    def on_change(self, listener: Callable[[], None]) -> None:
        """``listener()`` runs after every applied batch of subscription changes."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    async def wait_for(self, revision: int, timeout: float) -> bool:
        return await self._cache.wait_for(revision, timeout)

    def get(self, subscription_id: str) -> pb.EventSubscriptionResponse | None:
        """The cached record (shared: copy before changing it)."""
        return self._cache.get(subscription_id)

    def all(self) -> list[pb.EventSubscriptionResponse]:
        """Oldest first (createdAt, then id)."""
        return sorted(
            self._cache.values(),
            key=lambda r: (r.created_at.seconds, r.created_at.nanos, r.subscription_id),
        )


@dataclass(frozen=True, slots=True)
class Advanced:
    record: pb.EventSubscriptionResponse
    revision: int
    changed: bool


class SubscriptionWriter:
    def __init__(self, store: SubscriptionStore) -> None:
        self._store = store

    async def create(self, record: pb.EventSubscriptionResponse) -> int:
        key = keys.subscription_key(record.subscription_id)
        result = await self._store.txn([key_missing(key)], [Put(key, encode(record))])
        if not result.succeeded:  # a fresh uuid4: never in practice
            raise Conflict(
                f"subscription {record.subscription_id} exists", details={"key": key.decode()}
            )
        return result.revision

    async def read(self, subscription_id: str) -> pb.EventSubscriptionResponse:
        kv = await self._store.get(keys.subscription_key(subscription_id))
        if kv is None:
            raise not_found(subscription_id)
        return decode(kv)

    async def delete(self, subscription_id: str) -> int:
        """Deletes the record and its push owner key (the owner's loop then stops)."""
        key = keys.subscription_key(subscription_id)
        result = await self._store.txn(
            [Compare(key, CompareTarget.CREATE, CompareOp.GREATER, 0)],
            [Delete(key), Delete(keys.owner_key(subscription_id))],
        )
        if not result.succeeded:
            raise not_found(subscription_id)
        return result.revision

    async def advance(
        self,
        subscription_id: str,
        cursor: int,
        *,
        dead: Iterable[pb.DeadBatch] = (),
        guard: Compare | None = None,
    ) -> Advanced:
        """Moves the cursor to ``cursor`` unless it is already there or beyond, and appends
        ``dead`` batches (keeping the last MAX_DEAD_BATCHES). ``guard``: one more compare the
        write needs (a push owner's lease); when it fails, Conflict."""
        key = keys.subscription_key(subscription_id)
        dead = list(dead)
        for _ in range(CAS_ATTEMPTS):
            kv = await self._store.get(key)
            if kv is None:
                raise not_found(subscription_id)
            record = decode(kv)
            if cursor <= record.cursor and not dead:
                return Advanced(record, kv.mod_revision, False)
            record.cursor = max(record.cursor, cursor)
            if dead:
                record.dead_batches.extend(dead)
                excess = len(record.dead_batches) - MAX_DEAD_BATCHES
                if excess > 0:
                    del record.dead_batches[:excess]
            compares = [mod_revision_is(key, kv.mod_revision)]
            if guard is not None:
                compares.append(guard)
            result = await self._store.txn(compares, [Put(key, encode(record))])
            if result.succeeded:
                record.revision = result.revision
                return Advanced(record, result.revision, True)
            if guard is not None and not await self._holds(guard):
                raise Conflict("the push owner's lease is gone", details={"key": key.decode()})
        raise Conflict(
            f"subscription {subscription_id} changed concurrently; retry",
            details={"key": key.decode()},
        )

    async def _holds(self, guard: Compare) -> bool:
        result = await self._store.txn([guard], [])
        return result.succeeded
