"""The real parts behind sidecar status, for unit tests without a gRPC server: a memory store
on a fake clock, instances with real store leases, the status writer, status indexes, sessions,
observers; and metrics reports to feed them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as dpb
from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2 as pb
from lucid_cp.clock import FakeClock
from lucid_cp.mesh.selectors import Workload
from lucid_cp.replica_lease import ReplicaLease
from lucid_cp.sidecar.observe import Observer
from lucid_cp.sidecar.session import Session
from lucid_cp.sidecar.status import StatusIndex
from lucid_cp.sidecar.usage import BUCKETS
from lucid_cp.sidecar.writer import StatusWriter, WriterStore
from lucid_cp.store.memory import MemoryStore
from tests.watchcache.fakes import eventually

T0 = 1_700_000_040.0  # the start of a minute
M0 = int(T0) // 60  # ... that minute
INTERVAL = 0.05  # the writer's flush interval (fake seconds)
LONG_TTL = 7 * 86400  # instance leases that outlive every test's fake time
REPLICA = "replica-1"

SID_A = "550e8400-e29b-41d4-a716-446655440000"
SID_B = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
SID_C = "6ba7b811-9dad-11d1-80b4-00c04fd430c8"


def at(clock: FakeClock, seconds: float) -> None:
    """Moves the fake clock forward to exactly ``seconds``."""
    assert seconds >= clock.now(), f"the clock is already at {clock.now()}"
    clock.advance(seconds - clock.now())


async def ticking(clock: FakeClock, condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Moves the fake clock on by the writer's flush interval every loop turn until
    ``condition`` holds (the writer sleeps on the clock before each flush and retry)."""
    async with asyncio.timeout(timeout):
        while not condition():
            clock.advance(INTERVAL)
            await asyncio.sleep(0.002)


async def flushed(writer: StatusWriter, clock: FakeClock) -> None:
    """``writer.drain()``, moving the fake clock on by the flush interval while it waits (the
    flush loop gathers writes for one interval, and backs off on the clock after a failure)."""
    drain = asyncio.ensure_future(writer.drain())
    try:
        async with asyncio.timeout(5):
            while not drain.done():
                clock.advance(INTERVAL)
                await asyncio.wait({drain}, timeout=0.002)
    finally:
        drain.cancel()
    await drain


class Instances:
    """Registered instances as the sidecar parts see them: a real store lease each (the
    writer's ``lease_of``) and the discovery record (the observer's ``get``)."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self.leases: dict[str, int] = {}
        self.records: dict[str, dpb.ServiceInstance] = {}

    async def add(self, service_id: str, service_name: str, ttl: int = LONG_TTL) -> int:
        lease = (await self._store.grant_lease(ttl)).id
        self.leases[service_id] = lease
        self.records[service_id] = dpb.ServiceInstance(
            service_id=service_id, service_name=service_name
        )
        return lease

    def lease_of(self, service_id: str) -> int:
        return self.leases.get(service_id, 0)

    def get(self, service_id: str) -> dpb.ServiceInstance | None:
        return self.records.get(service_id)


@dataclass
class Replica:
    """One control-plane replica's status parts on a shared store."""

    clock: FakeClock
    lease: ReplicaLease
    writer: StatusWriter
    status: StatusIndex
    observer: Observer
    sessions: dict[str, Session] = field(default_factory=dict)

    def connect(self, service_id: str, instances: Instances) -> Session:
        name = instances.records[service_id].service_name
        session = Session(
            service_id,
            name,
            Workload(name),
            "1.4.2",
            clock=self.clock,
            writer=self.writer,
            previous=None,
        )
        self.sessions[service_id] = session
        return session

    def tick(self) -> None:
        for session in self.sessions.values():
            session.tick()


async def start_replica(
    store: MemoryStore,
    clock: FakeClock,
    instances: Instances,
    name: str = REPLICA,
    *,
    writer_store: WriterStore | None = None,
    local: Callable[[], Mapping[str, Session]] | None = None,
) -> Replica:
    """A replica whose observer sees its own sessions as local (unless ``local`` says else)."""
    lease = ReplicaLease(writer_store or store, clock, ttl=LONG_TTL)
    writer = StatusWriter(
        writer_store or store,
        instances.lease_of,
        name,
        lease=lease,
        clock=clock,
        interval=INTERVAL,
    )
    status = StatusIndex(store, clock=clock)
    await status.start()
    await writer.start()
    sessions: dict[str, Session] = {}
    observer = Observer(store, status, instances, (), local or (lambda: sessions), clock)
    return Replica(clock, lease, writer, status, observer, sessions)


async def stop_replica(replica: Replica) -> None:
    await replica.writer.stop()
    await replica.lease.stop()
    await replica.status.stop()


async def caught_up(store: MemoryStore, *replicas: Replica) -> None:
    """Every replica's status index has applied the store's current revision."""
    revision = await store.current_revision()
    await eventually(lambda: all(r.status.revision >= revision for r in replicas))


def ts(seconds: float) -> Timestamp:
    whole = int(seconds // 1)
    return Timestamp(seconds=whole, nanos=round((seconds - whole) * 1e9))


def hist(**at: int) -> list[int]:
    """21 counts, zero but for ``b<index>=count``."""
    counts = [0] * BUCKETS
    for name, count in at.items():
        counts[int(name[1:])] = count
    return counts


def report(start: float, end: float, **fields: Any) -> pb.ConnectRequest:
    """A Connect message carrying a report of [T0 + start, T0 + end)."""
    fields.setdefault("healthy", True)
    return pb.ConnectRequest(
        report=pb.MetricsReport(window_start=ts(T0 + start), window_end=ts(T0 + end), **fields)
    )
