"""The status writer and what sessions hand it, through a memory store on a fake clock: txns of
at most MAX_TXN_OPS ops, writes of gone instances dropped, store outages retried without losing
the latest value, the replica lease revoked on stop, usage kept a day; and the receipts and
reports a session accepts or refuses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2 as pb
from lucid_cp.api.lucid.sidecar.v1 import storage_pb2 as spb
from lucid_cp.clock import FakeClock
from lucid_cp.errors import FieldViolation
from lucid_cp.sidecar import keys
from lucid_cp.sidecar.session import InvalidConnectMessage, Session
from lucid_cp.store.base import (
    MAX_TXN_OPS,
    Compare,
    Lease,
    StoreUnavailableError,
    TxnOp,
    TxnResult,
)
from lucid_cp.store.memory import MemoryStore
from tests.sidecar.status_parts import (
    M0,
    REPLICA,
    SID_A,
    SID_B,
    SID_C,
    T0,
    Instances,
    Replica,
    at,
    caught_up,
    flushed,
    hist,
    report,
    start_replica,
    stop_replica,
    ticking,
)
from tests.watchcache.fakes import eventually


class TxnLog:
    """The writer's store: the memory store, recording the op count of every txn. The next
    ``fail`` txns raise StoreUnavailableError; while ``gate`` is closed, txns wait at it."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.txns: list[int] = []
        self.fail = 0
        self.failed = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = 0  # txns held at the gate

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[TxnOp], failure: Sequence[TxnOp] = ()
    ) -> TxnResult:
        self.waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        if self.fail > 0:
            self.fail -= 1
            self.failed += 1
            raise StoreUnavailableError("store down")
        result = await self.store.txn(compares, success, failure)
        self.txns.append(len(success))
        return result

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        return await self.store.put(key, value, lease=lease)

    async def delete(self, key: bytes, *, prefix: bool = False) -> tuple[int, int]:
        return await self.store.delete(key, prefix=prefix)

    async def grant_lease(self, ttl: int) -> Lease:
        return await self.store.grant_lease(ttl)

    async def keepalive(self, lease_id: int) -> int:
        return await self.store.keepalive(lease_id)

    async def revoke_lease(self, lease_id: int) -> int:
        return await self.store.revoke_lease(lease_id)


@dataclass
class Parts:
    store: MemoryStore
    log: TxnLog
    clock: FakeClock
    instances: Instances
    replica: Replica

    async def stored_session(self, sid: str) -> spb.SidecarSession | None:
        kv = await self.store.get(keys.session_key(sid))
        return spb.SidecarSession.FromString(kv.value) if kv is not None else None

    async def flushed(self) -> None:
        await flushed(self.replica.writer, self.clock)


@pytest.fixture
async def parts() -> AsyncIterator[Parts]:
    clock = FakeClock(now=T0)
    store = MemoryStore(clock=clock)
    log = TxnLog(store)
    instances = Instances(store)
    for sid, name in ((SID_A, "orders"), (SID_B, "orders"), (SID_C, "billing")):
        await instances.add(sid, name)
    replica = await start_replica(store, clock, instances, writer_store=log)
    try:
        yield Parts(store, log, clock, instances, replica)
    finally:
        log.gate.set()
        await stop_replica(replica)
        await store.close()


def session_record(sid: str, name: str = "orders", **fields: Any) -> spb.SidecarSession:
    return spb.SidecarSession(service_id=sid, service_name=name, replica=REPLICA, **fields)


# --- the writer ---------------------------------------------------------------------------------


async def test_writes_go_in_txns_of_at_most_max_txn_ops(parts: Parts) -> None:
    lease = parts.instances.leases[SID_A]
    sids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(300)]
    for sid in sids:
        parts.instances.leases[sid] = lease
        parts.replica.writer.session(session_record(sid, build=sid[-3:]))
    parts.replica.writer.progress(5, 300)
    assert parts.replica.writer.backlog == 301
    await parts.flushed()
    assert parts.log.txns == [MAX_TXN_OPS, MAX_TXN_OPS, 301 - 2 * MAX_TXN_OPS]
    found = await parts.store.range(keys.SESSIONS)
    assert [spb.SidecarSession.FromString(kv.value).build for kv in found.kvs] == [
        s[-3:] for s in sids
    ]
    assert all(kv.lease == lease for kv in found.kvs)
    assert await parts.store.get(keys.replica_key(REPLICA)) is not None


async def test_a_write_of_a_gone_instance_is_dropped_and_the_rest_written(parts: Parts) -> None:
    writer = parts.replica.writer
    for sid in (SID_A, SID_B, SID_C):
        writer.session(session_record(sid, build="1"))
    await parts.store.revoke_lease(parts.instances.leases[SID_B])  # B deregistered meanwhile
    writer.session(session_record("00000000-0000-4000-8000-000000000009"))  # no lease: not queued
    assert writer.backlog == 3
    await parts.flushed()
    assert await parts.stored_session(SID_B) is None
    a, c = await parts.stored_session(SID_A), await parts.stored_session(SID_C)
    assert a is not None and c is not None and a.build == c.build == "1"
    assert writer.failures == 0 and writer.backlog == 0
    assert parts.log.txns == [2]  # the refused txn is not logged; A and C went in one retry


async def test_a_store_outage_keeps_the_batch_until_the_store_recovers(parts: Parts) -> None:
    writer = parts.replica.writer
    parts.log.fail = 3
    writer.session(session_record(SID_A, build="1"))
    await ticking(parts.clock, lambda: writer.failures == 1)
    assert writer.backlog == 1 and await parts.stored_session(SID_A) is None
    await parts.flushed()  # retried with backoff on the clock: two more failures, then written
    assert (writer.failures, parts.log.failed, writer.backlog) == (3, 3, 0)
    stored = await parts.stored_session(SID_A)
    assert stored is not None and stored.build == "1"


async def test_a_value_queued_during_a_failing_flush_wins(parts: Parts) -> None:
    writer = parts.replica.writer
    writer.session(session_record(SID_A, applied_version=1))
    parts.log.gate.clear()
    # Until the flush of version 1 is held in its txn:
    await ticking(parts.clock, lambda: parts.log.waiting == 1)
    writer.session(session_record(SID_A, applied_version=2))
    parts.log.fail = 1
    parts.log.gate.set()
    await eventually(lambda: writer.failures == 1)
    assert writer.backlog == 1  # one key, the newer value
    await parts.flushed()
    stored = await parts.stored_session(SID_A)
    assert stored is not None and stored.applied_version == 2
    # ... and one queued during the backoff after a failure wins as well.
    parts.log.fail = 1
    writer.session(session_record(SID_A, applied_version=3))
    await ticking(parts.clock, lambda: writer.failures == 2)
    writer.session(session_record(SID_A, applied_version=4))
    await parts.flushed()
    stored = await parts.stored_session(SID_A)
    assert stored is not None and stored.applied_version == 4


async def test_drain_waits_for_a_flush_in_flight(parts: Parts) -> None:
    writer = parts.replica.writer
    writer.session(session_record(SID_A, build="1"))
    parts.log.gate.clear()
    await ticking(parts.clock, lambda: parts.log.waiting == 1)
    drain = asyncio.ensure_future(writer.drain())
    await asyncio.sleep(0.02)
    assert not drain.done(), "drain returned while the write was still in its txn"
    parts.log.gate.set()
    await asyncio.wait_for(drain, 5)
    assert await parts.stored_session(SID_A) is not None


async def test_stop_revokes_the_replica_lease(parts: Parts) -> None:
    replica = parts.replica
    session = replica.connect(SID_A, parts.instances)
    replica.writer.progress(12, 1)
    await parts.flushed()
    await caught_up(parts.store, replica)
    record = replica.status.session(SID_A)
    assert record is not None and replica.status.live(record)
    assert replica.status.replicas()[REPLICA].evaluated_revision == 12
    await replica.writer.stop()
    await caught_up(parts.store, replica)
    assert await parts.store.get(keys.replica_key(REPLICA)) is None
    assert replica.status.replicas() == {}
    # The session record outlives the replica (the instance's lease) but no longer reads live.
    record = replica.status.session(SID_A)
    assert record is not None and record.connected and not replica.status.live(record)
    assert session.record.connected


async def test_a_new_minute_deletes_the_same_minute_a_day_before(parts: Parts) -> None:
    writer = parts.replica.writer
    day = 24 * 60
    for minute in (M0 - day, M0 - day + 1):
        writer.usage(
            spb.UsageMinute(service_id=SID_A, service_name="orders", minute=minute, stream="s1")
        )
    await parts.flushed()
    prefix = keys.usage_prefix("orders", SID_A)
    found = await parts.store.range(prefix)
    assert [keys.usage_minute(kv.key) for kv in found.kvs] == [M0 - day, M0 - day + 1]
    writer.usage(
        spb.UsageMinute(service_id=SID_A, service_name="orders", minute=M0, reports=1, stream="s2")
    )
    await parts.flushed()
    found = await parts.store.range(prefix)
    assert [keys.usage_minute(kv.key) for kv in found.kvs] == [M0 - day + 1, M0]
    assert all(kv.lease == parts.instances.leases[SID_A] for kv in found.kvs)


# --- session receipts and reports ---------------------------------------------------------------


async def sent(session: Session, version: int, digest: bytes, observed_at: float = T0) -> str:
    """Offers a snapshot of ``version`` (of a change observed at ``observed_at``) and takes it off
    the session as the stream would; its nonce."""
    session.offer(pb.ConnectResponse(version=version), digest, observed_at)
    snapshot = await asyncio.wait_for(session.next_snapshot(), 5)
    assert snapshot is not None and snapshot.version == version
    return snapshot.nonce


def ack(version: int, nonce: str) -> pb.ConnectRequest:
    return pb.ConnectRequest(ack=pb.Ack(version=version, nonce=nonce))


def nack(version: int, nonce: str, error: str) -> pb.ConnectRequest:
    return pb.ConnectRequest(nack=pb.Nack(version=version, nonce=nonce, error=error))


async def test_an_ack_of_an_unknown_nonce_is_ignored(parts: Parts) -> None:
    session = parts.replica.connect(SID_A, parts.instances)
    await sent(session, 3, b"d3")
    session.receive(ack(3, "0123456789abcdef"))
    assert session.record.applied_version == 0 and not session.record.HasField("last_ack")
    await parts.flushed()
    stored = await parts.stored_session(SID_A)
    assert stored is not None
    assert (stored.applied_version, stored.latest_version, stored.connected) == (0, 3, True)


async def test_a_receipt_naming_another_version_than_its_nonce_is_refused(parts: Parts) -> None:
    session = parts.replica.connect(SID_A, parts.instances)
    nonce = await sent(session, 5, b"d5")
    with pytest.raises(InvalidConnectMessage) as refused:
        session.receive(ack(4, nonce))
    assert refused.value.violations == [FieldViolation("ack.version", "must be 5 for this nonce")]
    with pytest.raises(InvalidConnectMessage) as refused:
        session.receive(nack(6, nonce, "bad"))
    assert [v.field for v in refused.value.violations] == ["nack.version"]
    assert session.record.applied_version == 0 and not session.record.HasField("last_nack")


async def test_a_nack_keeps_the_applied_version_and_the_next_ack_clears_it(parts: Parts) -> None:
    session = parts.replica.connect(SID_A, parts.instances)
    at(parts.clock, T0 + 10)
    one = await sent(session, 1, b"d1", observed_at=T0 + 10)
    at(parts.clock, T0 + 10.25)
    session.receive(ack(1, one))
    assert (session.record.applied_version, session.record.applied_digest) == (1, b"d1")
    assert session.record.ack_latency_ms == 250.0

    two = await sent(session, 2, b"d2")
    at(parts.clock, T0 + 20)
    session.receive(nack(2, two, "route to unknown cluster"))
    await parts.flushed()
    for record in (session.record, await parts.stored_session(SID_A)):
        assert record is not None
        assert (record.applied_version, record.applied_digest, record.latest_version) == (
            1,
            b"d1",
            2,
        )
        assert (record.last_nack.version, record.last_nack.error) == (
            2,
            "route to unknown cluster",
        )
        assert record.last_nack.at.ToNanoseconds() == int(T0 + 20) * 10**9

    three = await sent(session, 3, b"d3")
    session.receive(ack(3, three))
    await parts.flushed()
    for record in (session.record, await parts.stored_session(SID_A)):
        assert record is not None
        assert (record.applied_version, record.applied_digest) == (3, b"d3")
        assert not record.HasField("last_nack")
    # A late ACK of the older snapshot changes nothing.
    session.receive(ack(1, one))
    assert session.record.applied_version == 3


async def test_a_report_with_bad_fields_is_refused_with_violations(parts: Parts) -> None:
    session = parts.replica.connect(SID_A, parts.instances)
    at(parts.clock, T0 + 30)
    bad = report(
        20,
        10,  # ends before it starts
        requests=5,
        errors=6,
        latency_buckets=hist(b0=4),
        by_status={"2xx": 3, "6xx": 1},
    )
    with pytest.raises(InvalidConnectMessage) as refused:
        session.receive(bad)
    assert [v.field for v in refused.value.violations] == [
        "report.windowEnd",
        "report.latencyBuckets",
        "report.byStatus",
        "report.errors",
    ]
    assert session.unflushed() == [] and not session.record.HasField("last_report")
    with pytest.raises(InvalidConnectMessage) as refused:
        session.receive(report(0, 10, requests=2))  # requests without buckets
    assert [v.field for v in refused.value.violations] == ["report.latencyBuckets"]
    with pytest.raises(InvalidConnectMessage) as refused:
        session.receive(pb.ConnectRequest(hello=pb.Hello(service_id=SID_A)))
    assert [v.field for v in refused.value.violations] == ["hello"]
    with pytest.raises(InvalidConnectMessage) as refused:
        session.receive(pb.ConnectRequest())
    assert [v.field for v in refused.value.violations] == ["kind"]
    # A good one is merged.
    session.receive(report(0, 10, requests=2, latency_buckets=hist(b0=2)))
    assert [(r.minute, r.requests) for r in session.unflushed()] == [(M0, 2)]
