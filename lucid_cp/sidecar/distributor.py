"""Config distribution: which connected sidecar needs a new snapshot after a store change, and
getting it there.

One watch on /lucid/ (every system's keys, in store order) tells the distributor what changed.
For each batch it first waits until the index holding the changed keys has applied the batch's
revision (the snapshot is built from the indexes), then marks the affected sidecars:

- a traffic or security policy: the sidecars whose workload its old or new source or
  destination selector matches;
- a circuit breaker of service X, a sidecar configuration of an instance of X, an endpoint
  change of X (only when X's usable endpoints actually changed): the sidecars that route to X
  (the dependency index: destination service -> sidecars, kept from each sidecar's last
  snapshot); a configuration also marks its own sidecar;
- the mesh-wide mTLS settings: every sidecar;
- the sidecar's own instance: its sidecar (deregistered: its stream ends with NOT_FOUND).

Marked sidecars are rebuilt together by one task; a snapshot whose content digest equals what
the sidecar already has is not sent. The version of a snapshot is the revision the distributor
has evaluated when building it, so "version >= N" means "built after every change up to N".
Everything else (other systems' keys, status writes) only advances the evaluated revision.

A store outage ends the watch: it is resumed from the last evaluated revision + 1 with backoff
(pushes pause, then resume with the latest snapshot); if that revision was compacted meanwhile,
every sidecar is marked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as dpb
from lucid_cp.api.lucid.mesh.v1 import mesh_pb2 as mpb
from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2 as pb
from lucid_cp.api.lucid.sidecar.v1 import storage_pb2 as spb
from lucid_cp.auth.tokens import Principal
from lucid_cp.clock import Clock
from lucid_cp.discovery import keys as discovery_keys
from lucid_cp.discovery.records import decode_record
from lucid_cp.errors import Conflict, PermissionDenied, Unavailable
from lucid_cp.mesh import keys as mesh_keys
from lucid_cp.mesh.selectors import Workload
from lucid_cp.sidecar import keys
from lucid_cp.sidecar.errors import InstanceNotRegistered
from lucid_cp.sidecar.session import Session
from lucid_cp.sidecar.snapshot import SnapshotBuilder, selects, workload_of
from lucid_cp.sidecar.status import StatusIndex
from lucid_cp.sidecar.writer import StatusWriter
from lucid_cp.store.base import (
    CompactedError,
    EventType,
    KeyReader,
    WatchBatch,
    Watcher,
    WatchEvent,
)
from lucid_cp.tasks import cancel_and_wait
from lucid_cp.watchcache import Backoff

K = TypeVar("K")
log = logging.getLogger("lucid_cp.sidecar.distributor")

# Every configuration key (discovery, mesh, sidecar) lives under it; the message queue and the
# event log keep their data outside (/lucid-messaging/, /lucid-events/), so this watch never
# carries message traffic.
ROOT = b"/lucid/"
INDEX_WAIT = 2.0  # seconds to wait for an index to apply a batch before building anyway
TICK = 5.0  # seconds between flushes of completed usage minutes
PUSH_SLICE = 32  # snapshots built between yields to the event loop (so sending starts early)


class SessionReplaced(Conflict):
    """A newer Connect stream of the same sidecar took over (ABORTED)."""


class Index(Protocol):
    @property
    def revision(self) -> int: ...

    async def wait_for(self, revision: int, timeout: float) -> bool: ...


class DistributorStore(KeyReader, Watcher, Protocol):
    """Reads and one watch."""


class IndexContents(Protocol):
    """What the indexes hold now, as the distributor's maps need it."""

    def policies(self) -> Iterable[tuple[bytes, tuple[str, str]]]:
        """(store key, (source, destination)) of every traffic and security policy."""
        ...

    def instances(self) -> Iterable[tuple[str, str]]:
        """(serviceId, serviceName) of every registered instance."""
        ...

    def configs(self) -> Iterable[tuple[str, str]]:
        """(serviceId, serviceName) of every stored sidecar configuration."""
        ...


async def _supervised(
    loop: Callable[[], Awaitable[None]], name: str, sleep: Callable[[float], Awaitable[None]]
) -> None:
    """Runs ``loop`` for good: an unexpected error is logged and the loop restarted (a bug
    must not silently end distribution)."""
    while True:
        try:
            await loop()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("sidecar distributor: the %s loop failed; restarting it", name)
            await sleep(1.0)


@dataclass(slots=True)
class _Mark:
    observed_at: float


class Distributor:
    def __init__(
        self,
        store: DistributorStore,
        builder: SnapshotBuilder,
        *,
        instances: Index,
        configs: Index,
        mesh: Index,
        status: StatusIndex,
        writer: StatusWriter,
        clock: Clock,
    ) -> None:
        self._store = store
        self._builder = builder
        self._instances = instances
        self._configs = configs
        self._mesh = mesh
        self._status = status
        self._writer = writer
        self._clock = clock
        self.sessions: dict[str, Session] = {}
        self._by_destination: dict[str, set[str]] = {}
        self._by_workload: dict[Workload, set[str]] = {}
        self._selectors: dict[bytes, tuple[str, str]] = {}  # policy key -> (source, destination)
        self._instance_service: dict[str, str] = {}
        self._config_service: dict[str, str] = {}
        self._endpoint_digests: dict[str, bytes] = {}
        self._dirty: dict[str, _Mark] = {}
        self._pushing = False  # a batch of marked sidecars is being pushed
        self._ending = False  # end_streams ran: the replica is shutting down
        self._wake = asyncio.Event()
        self._evaluated_event = asyncio.Event()
        self.evaluated = 0
        self._tasks: list[asyncio.Task[None]] = []
        status.on_session(self._record_written)
        self.pushes = 0  # snapshots sent
        self.skipped = 0  # rebuilt snapshots equal to what the sidecar had

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, snapshot_of: IndexContents) -> None:
        """``snapshot_of`` lists what the indexes hold (now, and again after a compaction).
        Changes after the oldest index's revision are replayed through the watch."""
        self._snapshot_of = snapshot_of
        self.evaluated = min(self._instances.revision, self._configs.revision, self._mesh.revision)
        self._selectors = dict(snapshot_of.policies())
        self._instance_service = dict(snapshot_of.instances())
        self._config_service = dict(snapshot_of.configs())
        self._tasks = [
            asyncio.create_task(self._supervised(self._follow, "watch"), name="sidecar-watch"),
            asyncio.create_task(self._supervised(self._push_loop, "push"), name="sidecar-push"),
            asyncio.create_task(self._supervised(self._tick_loop, "tick"), name="sidecar-tick"),
        ]

    def _supervised(
        self, loop: Callable[[], Awaitable[None]], name: str
    ) -> Coroutine[Any, Any, None]:
        return _supervised(loop, name, self._clock.sleep)

    def end_streams(self) -> None:
        self._ending = True  # a stream still opening is refused once its awaits are over
        for session in list(self.sessions.values()):
            session.close(Unavailable("this control-plane replica is shutting down; reconnect"))
            self.close(session)

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(*tasks)
        for session in list(self.sessions.values()):
            session.close()
            self._forget(session, replaced=False)

    # -- streams -----------------------------------------------------------------------------

    async def open(self, principal: Principal, hello: pb.Hello) -> Session:
        """A session for the sidecar saying ``hello``; its first snapshot is queued unless the
        version it has is current."""
        instance = self._builder_instance(hello.service_id)
        if instance is None:
            stored = await self._store.get(discovery_keys.instance_key(hello.service_id))
            if stored is not None:  # registered through another replica: let the index catch up
                await self._instances.wait_for(stored.mod_revision, INDEX_WAIT)
                instance = self._builder_instance(hello.service_id)
        if instance is None:
            raise InstanceNotRegistered(
                f"no instance {hello.service_id} is registered",
                details={"serviceId": hello.service_id},
            )
        if principal.subject != instance.service_name:
            # Admin included: a sidecar acts as its own service, never on another's behalf.
            raise PermissionDenied(
                f"token subject {principal.subject!r} may not connect the sidecar of an instance "
                f"of service {instance.service_name!r}",
                details={"subject": principal.subject, "serviceName": instance.service_name},
            )
        await self._caught_up()
        if hello.version > self.evaluated:
            # It was served by a replica further ahead: catch up before comparing versions.
            with contextlib.suppress(TimeoutError):
                async with self._clock.timeout(INDEX_WAIT):
                    while self.evaluated < hello.version:
                        self._evaluated_event.clear()
                        await self._evaluated_event.wait()
            if hello.version > self.evaluated:
                raise Unavailable(
                    f"this replica has evaluated the store up to revision {self.evaluated}, "
                    f"older than the sidecar's version {hello.version}; retry"
                )
        if self._ending:
            raise Unavailable("this control-plane replica is shutting down; reconnect")
        # Deregistered meanwhile (the watch saw it before this session existed)?
        instance = self._builder_instance(hello.service_id)
        if instance is None:
            raise InstanceNotRegistered(
                f"no instance {hello.service_id} is registered",
                details={"serviceId": hello.service_id},
            )
        old = self.sessions.get(hello.service_id)
        if old is not None:
            old.close(SessionReplaced("a newer Connect stream of this sidecar took over"))
            self._forget(old, replaced=True)
        previous = self._status.session(hello.service_id)
        if previous is not None and previous.applied_version != hello.version:
            previous = None  # it does not have what it last ACKed: treat as new
        session = Session(
            hello.service_id,
            instance.service_name,
            workload_of(instance),
            hello.build,
            clock=self._clock,
            writer=self._writer,
            previous=previous,
        )
        self.sessions[hello.service_id] = session
        self._by_workload.setdefault(session.workload, set()).add(hello.service_id)
        try:
            self._push(session, self._clock.now())
        except BaseException:
            self.close(session)
            raise
        if session.closed:  # its instance was gone after all
            self.close(session)
            raise session.error or InstanceNotRegistered(
                f"no instance {hello.service_id} is registered",
                details={"serviceId": hello.service_id},
            )
        self._progress()
        return session

    def close(self, session: Session) -> None:
        """The stream ended (however): forget the session unless a newer one replaced it."""
        session.close()
        if self.sessions.get(session.service_id) is session:
            self._forget(session, replaced=False)
            self._progress()

    def _forget(self, session: Session, *, replaced: bool) -> None:
        sid = session.service_id
        if self.sessions.get(sid) is session:
            del self.sessions[sid]
        for dest in session.destinations:
            self._drop_dependency(dest, sid)
        self._unlink(self._by_workload, session.workload, sid)
        self._dirty.pop(sid, None)
        session.disconnected(replaced=replaced)

    @staticmethod
    def _unlink(index: dict[K, set[str]], key: K, sid: str) -> None:
        found = index.get(key)
        if found is not None:
            found.discard(sid)
            if not found:
                del index[key]

    def _record_written(self, record: spb.SidecarSession) -> None:
        """Another replica wrote the record of a sidecar whose stream is open here: it was the
        sidecar's previous stream ending late (a reconnection across replicas). This stream is
        the newer one, so its record is written again."""
        session = self.sessions.get(record.service_id)
        if session is None or record.replica == self._writer.replica:
            return
        if not record.connected or record.connected_since.ToNanoseconds() <= (
            session.record.connected_since.ToNanoseconds()
        ):
            session.save()

    def _drop_dependency(self, destination: str, sid: str) -> None:
        self._unlink(self._by_destination, destination, sid)
        if destination not in self._by_destination:  # nobody routes there any more
            self._endpoint_digests.pop(destination, None)
            self._builder.forget(destination)

    def _builder_instance(self, service_id: str) -> dpb.ServiceInstance | None:
        return self._builder.instance(service_id)

    # -- the effective configuration ---------------------------------------------------------

    def effective(self, service_id: str) -> pb.ConnectResponse | None:
        built = self._builder.build(service_id)
        if built is None:
            return None
        out = pb.ConnectResponse()
        out.CopyFrom(built.response)
        out.version = self.evaluated
        return out

    # -- pushing -----------------------------------------------------------------------------

    def _mark(self, sids: Iterable[str], observed_at: float) -> None:
        for sid in sids:
            if sid in self.sessions and sid not in self._dirty:
                self._dirty[sid] = _Mark(observed_at)
        if self._dirty:
            self._wake.set()

    async def _caught_up(self) -> None:
        """Waits (briefly) until every change the indexes hold has been evaluated: a snapshot
        is built from the indexes, so its version (the evaluated revision) must not be older
        than what it contains."""
        target = max(self._instances.revision, self._configs.revision, self._mesh.revision)
        if self.evaluated >= target:
            return
        with contextlib.suppress(TimeoutError):
            async with self._clock.timeout(INDEX_WAIT):
                while self.evaluated < target:
                    self._evaluated_event.clear()
                    await self._evaluated_event.wait()

    async def _push_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._caught_up()
            dirty, self._dirty = self._dirty, {}
            self._pushing = True
            try:
                for i, (sid, mark) in enumerate(dirty.items(), 1):
                    session = self.sessions.get(sid)
                    if session is not None:
                        self._push(session, mark.observed_at)
                    if i % PUSH_SLICE == 0:
                        await asyncio.sleep(0)  # let the first snapshots go out meanwhile
            finally:
                self._pushing = False
            self._progress()
            await asyncio.sleep(0)

    def _push(self, session: Session, observed_at: float) -> None:
        built = self._builder.build(session.service_id)
        if built is None:  # deregistered
            session.close(
                InstanceNotRegistered(
                    f"instance {session.service_id} was deregistered",
                    details={"serviceId": session.service_id},
                )
            )
            self.close(session)
            return
        sid = session.service_id
        if built.destinations != session.destinations:
            for dest in session.destinations - built.destinations:
                self._drop_dependency(dest, sid)
            for dest in built.destinations - session.destinations:
                self._by_destination.setdefault(dest, set()).add(sid)
            session.destinations = built.destinations
        for dest in built.destinations:
            self._endpoint_digests.setdefault(dest, self._builder.endpoints(dest)[1])
        if built.workload != session.workload:
            self._unlink(self._by_workload, session.workload, sid)
            session.workload = built.workload
            self._by_workload.setdefault(built.workload, set()).add(sid)
        interval = built.response.configuration.monitoring.metrics.interval
        session.set_report_interval(interval or 30)
        if session.has(built.digest):
            self.skipped += 1
            return
        snapshot = pb.ConnectResponse()
        snapshot.CopyFrom(built.response)
        snapshot.version = self.evaluated
        session.offer(snapshot, built.digest, observed_at)
        self.pushes += 1

    def _progress(self) -> None:
        """Publishes the evaluated revision, only when no marked sidecar waits for its push:
        rollout counts a sidecar current for N once its replica has evaluated N, so every
        snapshot N caused must be queued (the session record then says it is stale) first."""
        if not self._dirty and not self._pushing:
            self._writer.progress(self.evaluated, len(self.sessions))

    async def _tick_loop(self) -> None:
        while True:
            await self._clock.sleep(TICK)
            for session in list(self.sessions.values()):
                session.tick()

    # -- following the store -----------------------------------------------------------------

    async def _follow(self) -> None:
        backoff = Backoff()
        delay = backoff.initial
        while True:
            try:
                async for batch in self._watch():
                    await self._evaluate(batch.revision, batch.events)
                    delay = backoff.initial
            except asyncio.CancelledError:
                raise
            except CompactedError:
                log.warning(
                    "sidecar distributor: revision %d compacted; re-evaluating every sidecar",
                    self.evaluated + 1,
                )
                await self._resync()
                continue
            except Exception as exc:
                log.warning("sidecar distributor watch failed (%s); retrying in %.1fs", exc, delay)
            await self._clock.sleep(delay)
            delay = backoff.next(delay)

    async def _resync(self) -> None:
        """The changes since the evaluated revision are gone (compacted): start over from the
        indexes, as at start-up, and re-evaluate every sidecar (unchanged ones get nothing)."""
        self.evaluated = await self._store.current_revision()
        self._selectors = dict(self._snapshot_of.policies())
        self._instance_service = dict(self._snapshot_of.instances())
        self._config_service = dict(self._snapshot_of.configs())
        for sid, session in list(self.sessions.items()):
            if sid not in self._instance_service:
                session.close(
                    InstanceNotRegistered(
                        f"instance {sid} was deregistered", details={"serviceId": sid}
                    )
                )
                self.close(session)
        self._endpoint_digests.clear()
        for service in list(self._by_destination):
            self._builder.forget(service)
        self._evaluated_event.set()
        self._mark(list(self.sessions), self._clock.now())

    def _watch(self) -> AsyncIterator[WatchBatch]:
        return self._store.watch(ROOT, self.evaluated + 1)

    async def _evaluate(self, revision: int, events: list[WatchEvent]) -> None:
        observed_at = self._clock.now()
        waits: set[int] = set()
        for event in events:
            key = event.kv.key
            if key.startswith(mesh_keys.PREFIX):
                waits.add(id(self._mesh))
            elif key.startswith(keys.CONFIGS):
                waits.add(id(self._configs))
            elif key.startswith(discovery_keys.INSTANCES):
                waits.add(id(self._instances))
        for index in (self._mesh, self._configs, self._instances):
            if id(index) not in waits:
                continue
            # The change is under that index's prefix, so it will apply it: wait as long as it
            # takes (a stalled index stalls pushes rather than pushing without the change).
            while not await index.wait_for(revision, INDEX_WAIT):
                log.warning("sidecar distributor: an index has not applied %d yet", revision)
        affected: set[str] = set()
        for event in events:
            affected |= self._affected(event)
        self.evaluated = revision
        self._evaluated_event.set()
        if affected:
            self._mark(affected, observed_at)
        elif waits:
            self._progress()

    def _affected(self, event: WatchEvent) -> set[str]:
        key = event.kv.key
        deleted = event.type is EventType.DELETE
        parsed = mesh_keys.parse(key)
        if parsed is not None:
            kind, ident = parsed
            if kind is mesh_keys.Kind.MTLS:
                return set(self.sessions)
            if kind is mesh_keys.Kind.CIRCUIT_BREAKER:
                return set(self._by_destination.get(ident, ()))
            return self._policy_change(key, kind, event, deleted)
        sid = keys.parse(key)
        if sid is not None:
            return self._config_change(sid, event, deleted)
        found = discovery_keys.parse(key)
        if found is not None and found[0] == discovery_keys.INSTANCES:
            service = None
            if not deleted:
                try:
                    service = decode_record(event.kv.value, event.kv.mod_revision)[0].service_name
                except Exception:
                    return set()
            return self._instance_change(found[1], service)
        return set()

    def _policy_change(
        self, key: bytes, kind: mesh_keys.Kind, event: WatchEvent, deleted: bool
    ) -> set[str]:
        selectors = [self._selectors.pop(key)] if key in self._selectors else []
        if not deleted:
            decode = (
                mpb.TrafficPolicyResponse
                if kind is mesh_keys.Kind.TRAFFIC
                else mpb.SecurityPolicyResponse
            )
            try:
                policy = decode.FromString(event.kv.value).policy
            except Exception:
                policy = None
            if policy is not None:
                self._selectors[key] = (policy.source, policy.destination)
                selectors.append(self._selectors[key])
        texts = {t for pair in selectors for t in pair}
        out: set[str] = set()
        for workload, sids in self._by_workload.items():
            if any(selects(t, workload) for t in texts):
                out |= sids
        return out

    def _config_change(self, sid: str, event: WatchEvent, deleted: bool) -> set[str]:
        service = self._config_service.pop(sid, None)
        if not deleted:
            try:
                service = pb.SidecarConfigurationResponse.FromString(event.kv.value).service_name
            except Exception:
                return set()
            self._config_service[sid] = service
        out = {sid} if sid in self.sessions else set()
        if service:
            out |= self._by_destination.get(service, set())
        return out

    def _instance_change(self, sid: str, registered_as: str | None) -> set[str]:
        """``registered_as``: the instance's service after the change, None when deleted."""
        session = self.sessions.get(sid)
        deleted = registered_as is None
        service: str | None
        if registered_as is None:
            service = self._instance_service.pop(sid, None)
            if session is not None:
                session.close(
                    InstanceNotRegistered(
                        f"instance {sid} was deregistered", details={"serviceId": sid}
                    )
                )
                self.close(session)
        else:
            service = registered_as
            self._instance_service[sid] = service
        out = {sid} if session is not None and not deleted else set()
        if service:
            self._builder.forget(service)
            dependents = self._by_destination.get(service)
            if dependents:
                digest = self._builder.endpoints(service)[1]
                if digest != self._endpoint_digests.get(service):
                    self._endpoint_digests[service] = digest
                    out |= dependents
            else:
                self._endpoint_digests.pop(service, None)
        return out
