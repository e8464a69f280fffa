"""The reflector: one store prefix mirrored in memory, typed, with history and fan-out.

It lists the prefix in pages at one pinned revision, then watches from that revision + 1.

* Compaction (the watch cannot resume): it re-lists, and every subscription gets a fresh snapshot.
* Store outage: ``connected`` turns False and it retries with capped exponential backoff on the
  injected clock, resuming from the last applied revision + 1 (the store contract guarantees no
  silent skip, so deletions that happened meanwhile, e.g. expired leases, are applied on return).
* A bad record is logged and its key treated as absent; it never stalls the cache.

What a key means is the owner's :class:`~lucid_cp.watchcache.handler.Handler`; the reflector keeps
the typed cache (key -> value), a bounded history of changes (``changes_since``), the keyed fan-out
to subscriptions and read-your-writes waiting (``wait_for``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, ItemsView, Iterator, KeysView, ValuesView
from dataclasses import dataclass
from typing import Generic, TypeVar

from lucid_cp.clock import Clock
from lucid_cp.store.base import (
    CompactedError,
    EventType,
    KeyValue,
    StoreError,
    WatchBatch,
    WatchedPrefix,
    WatchEvent,
)
from lucid_cp.tasks import cancel_and_wait
from lucid_cp.watchcache.fanout import FanOut, Route
from lucid_cp.watchcache.handler import Handler
from lucid_cp.watchcache.history import Change, ChangeType, History
from lucid_cp.watchcache.subscription import Subscription
from lucid_cp.watchcache.waiters import RevisionWaiters

log = logging.getLogger("lucid_cp.watchcache")

V = TypeVar("V")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Retry delays after a store failure: ``initial``, times ``factor`` per failure, at most
    ``maximum`` seconds of the injected clock; back to ``initial`` once the store answers."""

    initial: float = 0.05
    maximum: float = 2.0
    factor: float = 2.0

    def next(self, delay: float) -> float:
        return min(delay * self.factor, self.maximum)


class Reflector(Generic[V]):
    def __init__(
        self,
        store: WatchedPrefix,
        prefix: bytes,
        handler: Handler[V],
        *,
        clock: Clock,
        history: int = 10_000,
        queue_size: int = 4096,
        list_page: int = 5_000,
        backoff: Backoff = Backoff(),
        name: str = "watchcache",
    ) -> None:
        if list_page < 1:
            raise ValueError("list_page must be at least 1")
        self._store = store
        self._prefix = prefix
        self._handler = handler
        self._clock = clock
        self._queue_size = queue_size
        self._list_page = list_page
        self._backoff = backoff
        self._delay = backoff.initial
        self.name = name
        self._cache: dict[str, V] = {}
        self._history: History[V] = History(history)
        self._fanout: FanOut[V] = FanOut()
        self._waiters = RevisionWaiters(clock)
        self._task: asyncio.Task[None] | None = None
        self.revision = 0  # every change up to here has been applied
        self.connected = False
        self.resyncs = 0  # full lists (the first one, and one after each compaction)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Lists the prefix (store errors propagate: fail fast at start-up), then follows it."""
        if self._task is not None:
            raise RuntimeError(f"{self.name} reflector already started")
        await self._list()
        self._task = asyncio.create_task(self._run(), name=f"{self.name}-reflector")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        self.connected = False

    async def _run(self) -> None:
        must_list = False
        while True:
            try:
                if must_list:
                    await self._list()
                    must_list = False
                await self._follow()
                reason = "watch ended"
            except CompactedError as exc:
                log.warning(
                    "%s: watch compacted at %d; re-listing", self.name, exc.compact_revision
                )
                must_list = True
                continue
            except StoreError as exc:
                reason = str(exc) or type(exc).__name__
            except Exception as exc:
                # A batch may be half applied (cache, history, fan-out): replaying the watch
                # would publish its first events twice. Start over from a fresh list instead.
                log.exception("%s: applying the watch failed; re-listing", self.name)
                reason = repr(exc)
                must_list = True
            self.connected = False
            log.warning(
                "%s: store watch interrupted (%s); retrying in %.2fs",
                self.name,
                reason,
                self._delay,
            )
            await self._clock.sleep(self._delay)
            self._delay = self._backoff.next(self._delay)

    async def _follow(self) -> None:
        if not self.connected:
            # The store answers again: connected, even if nothing is written under the prefix
            # for a long time (the watch yields only on changes).
            await self._store.current_revision()
            self.connected = True
            self._delay = self._backoff.initial
        watch = self._store.watch(self._prefix, self.revision + 1)
        try:
            async for batch in watch:
                self.connected = True
                self._delay = self._backoff.initial
                self._apply(batch)
        finally:
            close = getattr(watch, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()

    async def _list(self) -> None:
        revision, kvs = await self._list_all()
        self._cache.clear()
        self._handler.reset()
        for kv in kvs:
            self._apply_event(revision, WatchEvent(EventType.PUT, kv), record=False)
        self.revision = revision
        self._history.reset(revision)
        self.resyncs += 1
        self.connected = True
        self._delay = self._backoff.initial
        self._fanout.resync_all()
        self._handler.applied(revision)
        self._waiters.advance(revision)

    async def _list_all(self) -> tuple[int, list[KeyValue]]:
        """Every key under the prefix, paged at one pinned revision (one consistent snapshot
        without one huge response)."""
        page = await self._store.range(self._prefix, limit=self._list_page)
        kvs = list(page.kvs)
        while page.more and page.kvs:
            page = await self._store.range(
                self._prefix,
                limit=self._list_page,
                revision=page.revision,
                start=page.kvs[-1].key + b"\0",
            )
            kvs.extend(page.kvs)
        return page.revision, kvs

    # -- applying ----------------------------------------------------------------------------

    def _apply(self, batch: WatchBatch) -> None:
        for event in batch.events:
            self._apply_event(batch.revision, event, record=True)
        self.revision = batch.revision
        self._handler.applied(batch.revision)
        self._waiters.advance(batch.revision)

    def _apply_event(self, revision: int, event: WatchEvent, *, record: bool) -> None:
        kv = event.kv
        try:
            key = self._handler.key(kv.key)
        except Exception as exc:
            log.error(
                "%s: bad key %r at revision %d (%s); ignored", self.name, kv.key, revision, exc
            )
            return
        if key is None:
            self._handler.other(event)
            return
        previous = self._cache.get(key)
        if event.type is EventType.PUT:
            try:
                value = self._handler.decode(key, kv)
            except Exception as exc:
                log.error(
                    "%s: bad record %r at revision %d (%s); ignored",
                    self.name,
                    kv.key,
                    kv.mod_revision,
                    exc,
                )
            else:
                self._cache[key] = value
                self._handler.stored(key, value, previous)
                if record:
                    self._record_put(revision, key, value, previous)
                return
        if previous is None:
            return
        del self._cache[key]
        self._handler.removed(key, previous)
        if record:
            self._record(Change(revision, ChangeType.REMOVED, key, previous, self._group(previous)))

    def _record_put(self, revision: int, key: str, value: V, previous: V | None) -> None:
        group = self._group(value)
        if previous is None:
            self._record(Change(revision, ChangeType.ADDED, key, value, group))
            return
        old_group = self._group(previous)
        if old_group == group:
            self._record(Change(revision, ChangeType.UPDATED, key, value, group))
            return
        # It moved between groups: the old group's subscribers see it leave.
        self._record(Change(revision, ChangeType.REMOVED, key, previous, old_group))
        self._record(Change(revision, ChangeType.ADDED, key, value, group))

    def _group(self, value: V) -> str:
        return self._handler.group(value)

    def _record(self, change: Change[V]) -> None:
        self._history.append(change)
        self._fanout.publish(change)

    # -- reads -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._cache)

    def __contains__(self, key: str) -> bool:
        return key in self._cache

    def __iter__(self) -> Iterator[str]:
        return iter(self._cache)

    def get(self, key: str) -> V | None:
        return self._cache.get(key)

    def keys(self) -> KeysView[str]:
        return self._cache.keys()

    def values(self) -> ValuesView[V]:
        return self._cache.values()

    def items(self) -> ItemsView[str, V]:
        return self._cache.items()

    def changes_since(self, revision: int) -> list[Change[V]] | None:
        """Changes applied after ``revision``, oldest first; None when the retained history no
        longer reaches back that far (or a re-list reset it): re-read everything."""
        return self._history.since(revision)

    async def wait_for(self, revision: int, timeout: float) -> bool:
        """Waits until ``revision`` has been applied (read-your-writes): True once it has, False
        when ``timeout`` seconds of the injected clock pass first."""
        return await self._waiters.wait(revision, timeout)

    # -- subscriptions -----------------------------------------------------------------------

    @property
    def subscribers(self) -> int:
        return len(self._fanout)

    def subscribe(
        self,
        render: Callable[[Change[V]], T],
        snapshot: Callable[[], T],
        *,
        group: str = "",
        match: Callable[[V], bool] | None = None,
        start_revision: int = 0,
        queue_size: int | None = None,
    ) -> Subscription[T]:
        """A subscription to the changes of ``group`` ("" = every group) whose value ``match``es,
        each turned into an item by ``render``; ``snapshot()`` builds the item sent first and
        after any resync. ``start_revision`` 0: snapshot first; otherwise the retained changes
        with revision >= start_revision are replayed, or a snapshot sent if history is gone."""
        sub: Subscription[T] = Subscription(
            group, snapshot, queue_size or self._queue_size, self._fanout.remove
        )
        route: Route[V] = Route(render, match)
        if start_revision <= 0 or start_revision < self._history.floor:
            sub.needs_snapshot = True
        else:
            for change in self._history:
                if change.revision < start_revision or (group and change.group != group):
                    continue
                if route.wants(change):
                    sub.push(render(change))
        self._fanout.add(sub, route)
        return sub
