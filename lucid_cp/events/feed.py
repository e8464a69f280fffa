"""The control plane's own changes as events (source "lucid-cp"), published by every replica and
kept once: each event's id is a uuid5 of (resource key, kind, store revision), the same on every
replica, and the log's internal append skips an id already recorded.

Service events (discovery's index, one subscription to every instance change):

* service.registered: an instance was added (id of (serviceId, "registered", revision));
* service.health-changed: an update changed its status (serviceId, "health", revision); tags
  ``previousStatus`` and ``status``;
* service.deregistered / service.expired: its lease went away, both under the id of
  (serviceId, "removed", revision). The replica that deregistered it hears it from the
  registry (``on_deregistered``, awaited before Deregister answers) and answers once
  service.deregistered is stored; every replica publishes service.expired after ``grace``
  seconds unless that was stored by then, and the first append wins. So a lease that expired
  reads expired; a deregistration reads deregistered unless its event could not be stored
  (the store refused it, the replica stopped or died first).

The publisher appends in order; a stop appends what is still queued before it ends.

Data is the instance's REST JSON (the last known state for the removals); tags carry
``serviceName`` and ``serviceId``.

Mesh events: policy.updated for every write and delete of a traffic or security policy, a
circuit breaker or the mTLS settings (its own watch of /lucid/mesh/), id of (store key,
"policy", revision); data the resource's REST JSON; tags ``kind`` (traffic, security,
circuit-breakers, mtls), ``change`` (created, updated, deleted) and ``name``.

Data over the event limit (64 KiB; a mesh record may be up to 1.5 MiB) is a summary: the tags,
``key``, ``revision`` and ``truncated``. So no event is too large to append; one the store
refuses anyway is logged and dropped (only an unavailable store is retried).

After a resync (a compaction, or a feed that fell behind) the feed diffs the fresh snapshot
against what it knew and publishes the differences; a removal found that way has no revision of
its own (the snapshot's is used), so replicas may each publish it once.

At the start the feed diffs its first snapshot against the checkpoint (checkpoint.py: the
instances whose registration is stored and whose removal is not) the same way: instances
registered while no replica was publishing read service.registered, those gone read
service.expired (data and tags: serviceId, serviceName). Without a checkpoint (the first start,
or over its size) nothing is reported. Not seen: an instance registered and removed within the
downtime, one removed and registered again (same serviceId), and health changes meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as dpb
from lucid_cp.api.lucid.mesh.v1 import mesh_pb2 as mpb
from lucid_cp.api.lucid.messaging.v1 import events_pb2 as pb
from lucid_cp.clock import Clock
from lucid_cp.discovery.registry import Deregistration
from lucid_cp.events.checkpoint import Checkpoint
from lucid_cp.events.wire import enum_string, to_struct
from lucid_cp.mesh import keys as mesh_keys
from lucid_cp.store.base import KeyValue, StoreUnavailableError, WatchedPrefix
from lucid_cp.tasks import cancel_and_wait
from lucid_cp.validation import field_rules
from lucid_cp.watchcache import Change, ChangeType, Handler, Reflector, Subscription

log = logging.getLogger("lucid_cp.events.feed")

SOURCE = "lucid-cp"
# The namespace of the control plane's event ids (uuid5).
NAMESPACE = uuid.UUID("6f1f6a3e-6c1b-5d0e-9a51-1ac1d0e7e5a1")
# Seconds before a removal nobody explained as a deregistration is published as an expiry.
EXPIRY_GRACE = 2.0
# Seconds before the first retry of an append while the store is unavailable; doubled after
# each failure up to RETRY_MAX. Any other store error (a request too large, too many ops) would
# fail again: the event is logged and dropped, so it never holds up the ones after it.
RETRY = 0.25
RETRY_MAX = 5.0
# Seconds a stop may spend appending what is still queued.
STOP_DRAIN = 10.0
# An event's data at most (events.proto, ServiceEvent.data): a resource over it is replaced by
# a summary (its key, revision and the event's tags, "truncated": true).
_DATA_RULES = field_rules(pb.ServiceEvent.DESCRIPTOR.fields_by_name["data"])
assert _DATA_RULES is not None and _DATA_RULES.max_bytes
MAX_DATA_BYTES = _DATA_RULES.max_bytes
_HEALTH = dpb.HealthState.DESCRIPTOR
_REMEMBERED = 1024  # claims of deregistrations kept at most (each is dropped by its timer)

Append = Callable[[pb.ServiceEvent], Awaitable[object]]


def event_id(key: str, kind: str, revision: int) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{key}\x00{kind}\x00{revision}"))


def _data(key: str, revision: int, data: Message | None, tags: dict[str, str]) -> struct_pb2.Struct:
    """The event's data: ``data`` as REST JSON (None: an empty object), or a summary when that
    is over MAX_DATA_BYTES (a mesh record may be up to the store's 1.5 MiB)."""
    struct = to_struct(data) if data is not None else struct_pb2.Struct()
    if struct.ByteSize() <= MAX_DATA_BYTES:
        return struct
    summary = struct_pb2.Struct()
    summary.update({**tags, "key": key, "revision": revision, "truncated": True})
    return summary


@dataclass(eq=False, slots=True)
class _Queued:
    event: pb.ServiceEvent
    # True once appended (or recorded before under its id), False when dropped or not
    # appended by the stop.
    done: asyncio.Future[bool]


class Publisher:
    """Appends the feed's events one at a time, in order, retrying while the store is
    unavailable (backoff on the clock); an event the store refuses otherwise is dropped.

    ``stop`` appends what is still queued before it ends (each event tried once: the first that
    cannot reach the store drops the rest; at most STOP_DRAIN seconds), so a clean stop loses
    nothing that the store can take."""

    def __init__(self, append: Append, clock: Clock) -> None:
        self._append = append
        self._clock = clock
        # The head is the event being appended: it leaves the queue once settled.
        self._queue: deque[_Queued] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self.published = 0
        self.dropped = 0  # events the store refused for good, or left queued at the stop

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="events-feed-publisher")

    async def stop(self) -> None:
        self._stopped = True
        task, self._task = self._task, None
        await cancel_and_wait(task)
        try:
            async with self._clock.timeout(STOP_DRAIN):
                while self._queue:
                    item = self._queue[0]
                    try:
                        await self._append(item.event)
                    except StoreUnavailableError as exc:
                        log.warning("events feed: stopping with the store unavailable (%s)", exc)
                        break
                    except Exception as exc:
                        self._drop(item, exc)
                    else:
                        self._settle(item, True)
                    self._queue.popleft()
        except TimeoutError:
            log.warning("events feed: the stop's appends took over %.0fs", STOP_DRAIN)
        finally:
            if self._queue:
                log.error("events feed: %d event(s) not appended before the stop", len(self._queue))
            while self._queue:
                self.dropped += 1
                self._settle(self._queue.popleft(), False)
            self._idle.set()

    def publish(
        self,
        event_type: str,
        key: str,
        kind: str,
        revision: int,
        data: Message | None,
        tags: dict[str, str],
    ) -> asyncio.Future[bool]:
        """Queues the event of (``key``, ``kind``, ``revision``); ``data``: the resource (None:
        not known, an empty object; over MAX_DATA_BYTES, a summary). The future resolves True
        once it is stored, False when it is dropped (or the publisher has stopped)."""
        event = pb.ServiceEvent(
            event_id=event_id(key, kind, revision),
            event_type=event_type,
            source=SOURCE,
            version="1.0",
            tags=tags,
            data=_data(key, revision, data, tags),
        )
        stamp = timestamp_pb2.Timestamp()
        stamp.FromNanoseconds(int(self._clock.now() * 1e9))
        event.timestamp.CopyFrom(stamp)
        item = _Queued(event, asyncio.get_running_loop().create_future())
        if self._stopped:
            self._drop(item, "published after the stop")
            return item.done
        self._queue.append(item)
        self._idle.clear()
        self._wake.set()
        return item.done

    @property
    def pending(self) -> int:
        """Events queued, the one being appended included."""
        return len(self._queue)

    async def drain(self) -> None:
        """Returns once everything queued so far is settled (tests)."""
        await self._idle.wait()

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            item = self._queue[0]
            try:
                await self._append_retrying(item.event)
            except Exception as exc:
                self._drop(item, exc)
            else:
                self._settle(item, True)
            self._queue.popleft()

    def _settle(self, item: _Queued, stored: bool) -> None:
        if stored:
            self.published += 1
        if not item.done.done():
            item.done.set_result(stored)

    def _drop(self, item: _Queued, why: str | Exception) -> None:
        self.dropped += 1
        log.error(
            "events feed: event %s (%s) dropped: %s",
            item.event.event_id,
            item.event.event_type,
            why,
            exc_info=why if isinstance(why, Exception) else None,
        )
        self._settle(item, False)

    async def _append_retrying(self, event: pb.ServiceEvent) -> None:
        delay = RETRY
        while True:
            try:
                await self._append(event)
                return
            except StoreUnavailableError as exc:
                log.warning("events feed: append failed (%s); retrying in %.2fs", exc, delay)
                await self._clock.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)


# -- services ---------------------------------------------------------------------------------


class InstanceChanges(Protocol):
    """What the feed needs of discovery's index."""

    def subscribe(
        self,
        match: Callable[[dpb.ServiceInstance], bool],
        *,
        service_name: str = "",
        start_revision: int = 0,
    ) -> Subscription[dpb.WatchResponse]: ...


def _service_tags(instance: dpb.ServiceInstance) -> dict[str, str]:
    return {"serviceName": instance.service_name, "serviceId": instance.service_id}


def _struct(values: dict[str, str]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


class ServiceFeed:
    def __init__(
        self,
        index: InstanceChanges,
        publisher: Publisher,
        clock: Clock,
        *,
        grace: float = EXPIRY_GRACE,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self._index = index
        self._publisher = publisher
        self._clock = clock
        self._grace = grace
        self._checkpoint = checkpoint
        self._known: dict[str, dpb.ServiceInstance] | None = None
        # (serviceId, revision) of removals: waiting for the grace to pass, or explained.
        self._expiring: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._removed: dict[tuple[str, int], dpb.ServiceInstance] = {}
        # (serviceId, revision) -> the append of its service.deregistered: the expiry is
        # published only if that was not stored.
        self._claims: dict[tuple[str, int], asyncio.Future[bool]] = {}
        # serviceId -> deregistration hooks waiting for its removal to be seen.
        self._awaited: dict[str, list[asyncio.Future[None]]] = {}
        self._subscription: Subscription[dpb.WatchResponse] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def synced(self) -> bool:
        """Whether the first snapshot was applied (and, with a checkpoint, diffed)."""
        return self._known is not None

    @property
    def pending_expiries(self) -> int:
        """Removals waiting for the grace to pass before they are published as expiries."""
        return len(self._expiring)

    def start(self) -> None:
        self._subscription = self._index.subscribe(lambda _: True)
        self._task = asyncio.create_task(self._run(), name="events-service-feed")

    async def stop(self) -> None:
        if self._subscription is not None:
            self._subscription.close()
        tasks = [t for t in (self._task, *self._expiring.values()) if t is not None]
        self._task = None
        self._expiring.clear()
        for waiters in self._awaited.values():  # hooks waiting for a removal: they return
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        await cancel_and_wait(*tasks)

    async def _run(self) -> None:
        assert self._subscription is not None
        async for item in self._subscription:
            try:
                self._apply(item)
            except Exception:
                log.exception("events feed: a discovery change could not be published")

    def _apply(self, item: dpb.WatchResponse) -> None:
        if item.type == dpb.WATCH_EVENT_TYPE_SNAPSHOT:
            self._snapshot(item)
            return
        assert self._known is not None  # a snapshot always comes first
        instance, revision, sid = item.instance, item.revision, item.instance.service_id
        if item.type == dpb.WATCH_EVENT_TYPE_ADDED:
            self._known[sid] = instance
            self._registered(instance, revision)
        elif item.type == dpb.WATCH_EVENT_TYPE_UPDATED:
            previous = self._known.get(sid)
            self._known[sid] = instance
            if previous is not None and previous.status != instance.status:
                self._health_changed(previous.status, instance, revision)
        elif item.type == dpb.WATCH_EVENT_TYPE_REMOVED:
            self._known.pop(sid, None)
            self._gone(instance, revision)

    def _snapshot(self, item: dpb.WatchResponse) -> None:
        fresh = {i.service_id: i for i in item.snapshot.instances}
        known, self._known = self._known, fresh
        if known is None:
            self._first(fresh, item.revision)
            return
        for sid, instance in fresh.items():
            before = known.get(sid)
            if before is None:
                self._registered(instance, instance.revision)
            elif before.status != instance.status:
                self._health_changed(before.status, instance, instance.revision)
        for sid, instance in known.items():
            if sid not in fresh:
                self._gone(instance, item.revision)

    def _first(self, fresh: dict[str, dpb.ServiceInstance], revision: int) -> None:
        """The start. With a checkpoint: what changed since it, as a resync would (instances
        added: service.registered; gone: service.expired under the snapshot's revision, data
        and tags ``serviceId`` and ``serviceName``). Without one: nothing happened as far as
        this replica knows."""
        checkpoint = self._checkpoint
        base = checkpoint.loaded if checkpoint is not None else None
        if base is None:
            if checkpoint is not None:
                checkpoint.reset({sid: i.service_name for sid, i in fresh.items()}, revision)
            return
        for sid, instance in fresh.items():
            if sid not in base:
                self._registered(instance, instance.revision)
        for sid, name in base.items():
            if sid not in fresh:
                tags = {"serviceName": name, "serviceId": sid}
                done = self._publisher.publish(
                    "service.expired", sid, "removed", revision, _struct(tags), tags
                )
                self._when_stored(done, sid, None, revision)

    def _registered(self, instance: dpb.ServiceInstance, revision: int) -> None:
        done = self._publisher.publish(
            "service.registered",
            instance.service_id,
            "registered",
            revision,
            instance,
            _service_tags(instance),
        )
        self._when_stored(done, instance.service_id, instance.service_name, revision)

    def _when_stored(
        self, done: asyncio.Future[bool], service_id: str, name: str | None, revision: int
    ) -> None:
        """Tells the checkpoint once the event is stored: registered (``name``) or removed."""
        checkpoint = self._checkpoint
        if checkpoint is None:
            return

        def stored(future: asyncio.Future[bool]) -> None:
            if future.cancelled() or not future.result():
                return
            if name is None:
                checkpoint.removed(service_id, revision)
            else:
                checkpoint.registered(service_id, name, revision)

        done.add_done_callback(stored)

    def _health_changed(self, previous: int, instance: dpb.ServiceInstance, revision: int) -> None:
        tags = _service_tags(instance)
        tags["previousStatus"] = enum_string(_HEALTH, previous)
        tags["status"] = enum_string(_HEALTH, instance.status)
        self._publisher.publish(
            "service.health-changed", instance.service_id, "health", revision, instance, tags
        )

    def _gone(self, instance: dpb.ServiceInstance, revision: int) -> None:
        key = (instance.service_id, revision)
        self._removed[key] = instance
        self._expiring[key] = asyncio.create_task(self._expire_later(key))
        for waiter in self._awaited.pop(instance.service_id, ()):
            if not waiter.done():
                waiter.set_result(None)

    async def _removal(self, service_id: str, after: int) -> tuple[str, int] | None:
        """The key of the first removal of ``service_id`` after revision ``after`` among those
        waiting for their grace to pass; waits for it when it has not been seen yet (None: the
        feed stopped)."""
        while self._task is not None:
            seen = [k for k in self._removed if k[0] == service_id and k[1] > after]
            if seen:
                return min(seen, key=lambda k: k[1])
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            waiters = self._awaited.setdefault(service_id, [])
            waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in waiters:
                    waiters.remove(waiter)
                if not waiters and self._awaited.get(service_id) is waiters:
                    del self._awaited[service_id]
        return None

    async def _expire_later(self, key: tuple[str, int]) -> None:
        try:
            await self._clock.sleep(self._grace)
            claim = self._claims.pop(key, None)
            if claim is not None and await asyncio.shield(claim):
                return  # published as service.deregistered
            instance = self._removed.get(key)
            if instance is not None:
                self._publish_removal("service.expired", instance, key[1])
        finally:
            self._expiring.pop(key, None)
            self._removed.pop(key, None)

    async def on_deregistered(self, deregistration: Deregistration) -> None:
        """The registry's hook: this replica deregistered an instance. Waits for the watched
        removal of that serviceId (the first after the record the registry read: the revision
        the store answered may be a later one), then publishes service.deregistered under the
        removal's revision, the id the other replicas' expiry uses too. Returns once it is
        stored (the registry's timeout may stop the wait: the event stays queued). When it
        cannot be stored (the store refused it, the publisher stopped first), the removal is
        published as service.expired after the grace, under the same id: whichever is stored
        first stays."""
        if self._task is None:
            return  # stopped: another replica (or the next start) reports the removal
        service_id = deregistration.service_id
        key = await self._removal(service_id, deregistration.read_revision)
        if key is None:
            return  # the feed stopped meanwhile
        done = self._publish_removal("service.deregistered", self._removed[key], key[1])
        self._claims[key] = done
        while len(self._claims) > _REMEMBERED:
            del self._claims[next(iter(self._claims))]
        if not await asyncio.shield(done):
            log.warning(
                "events feed: service.deregistered of %s was not stored: left to the expiry",
                service_id,
            )

    def _publish_removal(
        self, event_type: str, instance: dpb.ServiceInstance, revision: int
    ) -> asyncio.Future[bool]:
        done = self._publisher.publish(
            event_type,
            instance.service_id,
            "removed",
            revision,
            instance,
            _service_tags(instance),
        )
        self._when_stored(done, instance.service_id, None, revision)
        return done


# -- mesh policies ----------------------------------------------------------------------------

MeshRecord = (
    mpb.TrafficPolicyResponse
    | mpb.SecurityPolicyResponse
    | mpb.CircuitBreakerResponse
    | mpb.MTLSConfigResponse
)
_MESH_DECODERS: dict[mesh_keys.Kind, Callable[[bytes], MeshRecord]] = {
    mesh_keys.Kind.TRAFFIC: mpb.TrafficPolicyResponse.FromString,
    mesh_keys.Kind.SECURITY: mpb.SecurityPolicyResponse.FromString,
    mesh_keys.Kind.CIRCUIT_BREAKER: mpb.CircuitBreakerResponse.FromString,
    mesh_keys.Kind.MTLS: mpb.MTLSConfigResponse.FromString,
}
_CHANGE = {
    ChangeType.ADDED: "created",
    ChangeType.UPDATED: "updated",
    ChangeType.REMOVED: "deleted",
}
_SNAPSHOT = object()


class _MeshRecords(Handler[MeshRecord]):
    def key(self, store_key: bytes) -> str | None:
        return store_key.decode() if mesh_keys.parse(store_key) is not None else None

    def decode(self, key: str, kv: KeyValue) -> MeshRecord:
        parsed = mesh_keys.parse(kv.key)
        assert parsed is not None
        record = _MESH_DECODERS[parsed[0]](kv.value)
        record.revision = kv.mod_revision
        return record


class MeshFeed:
    """Follows /lucid/mesh/ with its own watch-fed cache (the mesh index has no change feed)."""

    def __init__(self, store: WatchedPrefix, publisher: Publisher, clock: Clock) -> None:
        self._publisher = publisher
        self._cache: Reflector[MeshRecord] = Reflector(
            store, mesh_keys.PREFIX, _MeshRecords(), clock=clock, history=0, name="events-mesh"
        )
        self._known: dict[str, int] | None = None  # store key -> revision
        self._subscription: Subscription[object] | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._cache.start()
        self._subscription = self._cache.subscribe(lambda change: change, lambda: _SNAPSHOT)
        self._task = asyncio.create_task(self._run(), name="events-mesh-feed")

    async def stop(self) -> None:
        if self._subscription is not None:
            self._subscription.close()
        task, self._task = self._task, None
        await cancel_and_wait(task)
        await self._cache.stop()

    async def _run(self) -> None:
        assert self._subscription is not None
        async for item in self._subscription:
            try:
                if item is _SNAPSHOT:
                    self._snapshot()
                else:
                    assert isinstance(item, Change)
                    self._change(item)
            except Exception:
                log.exception("events feed: a mesh change could not be published")

    def _snapshot(self) -> None:
        now = {k: v.revision for k, v in self._cache.items()}
        known, self._known = self._known, now
        if known is None:
            return
        for key, record in self._cache.items():
            if known.get(key) != record.revision:
                change = "updated" if key in known else "created"
                self._publish(key, record, change, record.revision)
        for key in known.keys() - now.keys():
            self._publish(key, None, "deleted", self._cache.revision)

    def _change(self, change: Change[MeshRecord]) -> None:
        if self._known is None:
            self._known = {}
        if change.type is ChangeType.REMOVED:
            self._known.pop(change.key, None)
        else:
            self._known[change.key] = change.revision
        self._publish(change.key, change.value, _CHANGE[change.type], change.revision)

    def _publish(self, key: str, record: MeshRecord | None, change: str, revision: int) -> None:
        parsed = mesh_keys.parse(key.encode())
        assert parsed is not None
        kind, name = parsed
        tags = {"kind": kind.value, "change": change, "name": name or kind.value}
        self._publisher.publish("policy.updated", key, "policy", revision, record, tags)
