"""Metrics windows end to end through the real parts, on a fake clock: reports fed to sessions,
minutes handed to the status writer and written to a memory store, windows answered by the
observer from the stored minutes plus the holding replica's unwritten current minute.

The timeline (T0 is the start of minute M0; "now" is T0 + 330, in M5):

    sidecar  service  windowEnd  minute  requests  buckets       status            errors
    A        orders   T0 + 20    M0      10        b3 x10        2xx 10            0
    A        orders   T0 + 50    M0      20        b4 x20        2xx 18, 5xx 2     2
    A        orders   T0 + 130   M2      30        b5 x30        2xx 30            0
    B        orders   T0 + 200   M3      100       b2 x50 b9 x50 2xx 100           0
    A        orders   T0 + 250   M4      40        b8 x40        2xx 36, 4xx 4     0
    A        orders   T0 + 310   M5      10        b12 x10       5xx 10            10
    B        orders   T0 + 320   M5      0         (none)        -                 0
    C        billing  (never reports)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2 as pb
from lucid_cp.api.lucid.sidecar.v1 import storage_pb2 as spb
from lucid_cp.auth.tokens import Principal, Role
from lucid_cp.clock import FakeClock
from lucid_cp.errors import PermissionDenied
from lucid_cp.mesh.selectors import Workload
from lucid_cp.sidecar import keys
from lucid_cp.sidecar.errors import InstanceNotRegistered, InvalidSidecarConfiguration
from lucid_cp.sidecar.observe import Observer
from lucid_cp.sidecar.session import Session
from lucid_cp.store.memory import MemoryStore
from tests.sidecar.status_parts import (
    M0,
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
)

ADMIN = Principal("ops", Role.ADMIN)
ORDERS = Principal("orders", Role.SERVICE)
NOW = T0 + 330
M1, M5 = T0 + 60, T0 + 300  # the starts of minutes M1 and M5, in seconds

# (sidecar, windowStart, windowEnd, fields), in the order they arrive (at their windowEnd).
REPORTS: list[tuple[str, float, float, dict[str, Any]]] = [
    (SID_A, 0, 20, dict(requests=10, latency_buckets=hist(b3=10), by_status={"2xx": 10},
                        latency_sum_ms=80, connections_active=3, connections_opened=3,
                        bytes_in=1000, bytes_out=2000)),
    (SID_A, 20, 50, dict(requests=20, latency_buckets=hist(b4=20),
                         by_status={"2xx": 18, "5xx": 2}, errors=2, latency_sum_ms=300,
                         connections_active=4, connections_opened=1, bytes_in=2000,
                         bytes_out=4000)),
    (SID_A, 100, 130, dict(requests=30, latency_buckets=hist(b5=30), by_status={"2xx": 30},
                           latency_sum_ms=750, connections_active=5, connections_opened=2,
                           bytes_in=3000, bytes_out=6000)),
    (SID_B, 170, 200, dict(requests=100, latency_buckets=hist(b2=50, b9=50),
                           by_status={"2xx": 100}, latency_sum_ms=6000, connections_active=7,
                           connections_opened=7, bytes_in=10000, bytes_out=20000)),
    (SID_A, 220, 250, dict(requests=40, latency_buckets=hist(b8=40),
                           by_status={"2xx": 36, "4xx": 4}, latency_sum_ms=3400,
                           connections_active=2, bytes_in=4000, bytes_out=8000)),
    (SID_A, 280, 310, dict(requests=10, latency_buckets=hist(b12=10), by_status={"5xx": 10},
                           errors=10, latency_sum_ms=2500, connections_active=1,
                           connections_opened=1, bytes_in=500, bytes_out=700)),
    (SID_B, 290, 320, dict(connections_active=6)),
]  # fmt: skip


@dataclass
class Mesh:
    store: MemoryStore
    clock: FakeClock
    instances: Instances
    holder: Replica  # holds every Connect stream
    other: Replica  # holds none: sees only what is written

    async def metrics(
        self,
        time_range: int,
        principal: Principal = ADMIN,
        *,
        on: Observer | None = None,
        **request: Any,
    ) -> pb.SidecarMetrics:
        observer = on or self.holder.observer
        return await observer.metrics(
            principal, pb.GetSidecarMetricsRequest(time_range=time_range, **request)
        )

    async def stored_minutes(self, name: str, sid: str) -> dict[int, spb.UsageMinute]:
        found = await self.store.range(keys.usage_prefix(name, sid))
        return {
            keys.usage_minute(kv.key) or 0: spb.UsageMinute.FromString(kv.value) for kv in found.kvs
        }


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    clock = FakeClock(now=T0)
    store = MemoryStore(clock=clock)
    instances = Instances(store)
    await instances.add(SID_A, "orders")
    await instances.add(SID_B, "orders")
    await instances.add(SID_C, "billing")
    holder = await start_replica(store, clock, instances, "replica-1")
    other = await start_replica(store, clock, instances, "replica-2", local=dict)
    try:
        yield Mesh(store, clock, instances, holder, other)
    finally:
        await stop_replica(other)
        await stop_replica(holder)
        await store.close()


async def play(mesh: Mesh) -> None:
    """Connects A, B and C at T0 + 1, feeds REPORTS, ticks every session once a second as the
    distributor does, writes what is due, and stops the clock at NOW."""
    at(mesh.clock, T0 + 1)
    for sid in (SID_A, SID_B, SID_C):
        mesh.holder.connect(sid, mesh.instances)
    for sid, start, end, fields in REPORTS:
        while mesh.clock.now() + 1 < T0 + end:
            at(mesh.clock, int(mesh.clock.now()) + 1)
            mesh.holder.tick()
        at(mesh.clock, T0 + end)
        mesh.holder.sessions[sid].receive(report(start, end, **fields))
    at(mesh.clock, T0 + 325)
    mesh.holder.tick()
    await flushed(mesh.holder.writer, mesh.clock)
    await caught_up(mesh.store, mesh.holder, mesh.other)
    at(mesh.clock, NOW)


def summary(m: pb.SidecarMetrics) -> dict[str, Any]:
    s = m.metrics
    return {
        "window_start": m.window_start.ToNanoseconds() / 1e9,
        "timestamp": m.timestamp.ToNanoseconds() / 1e9,
        "has_reports": m.has_reports,
        "reports": m.reports,
        "sidecars": m.sidecars,
        "requests": s.requests.total,
        "request_rate": s.requests.rate,
        "by_status": dict(s.requests.by_status),
        "errors": s.errors.total,
        "error_rate": s.errors.rate,
        "p50": s.latency.p50,
        "p95": s.latency.p95,
        "p99": s.latency.p99,
        "mean": s.latency.mean,
        "active": s.connections.active,
        "opened": s.connections.total,
        "bytes_in": s.bandwidth.bytes_in,
        "bytes_out": s.bandwidth.bytes_out,
        "bytes_in_rate": s.bandwidth.bytes_in_rate,
        "bytes_out_rate": s.bandwidth.bytes_out_rate,
    }


def expected(
    *,
    start: float,
    seconds: float,
    requests: int,
    by_status: dict[str, int],
    errors: int,
    p: tuple[float, float, float],
    latency_sum: float,
    active: int,
    opened: int,
    bytes_in: int,
    bytes_out: int,
    reports: int,
    sidecars: int,
) -> dict[str, Any]:
    """The summary of a window of ``seconds`` (rates divide by it) starting at ``start``."""
    return {
        "window_start": start,
        "timestamp": NOW,
        "has_reports": reports > 0,
        "reports": reports,
        "sidecars": sidecars,
        "requests": requests,
        "request_rate": requests / seconds,
        "by_status": by_status,
        "errors": errors,
        "error_rate": errors / seconds,
        "p50": pytest.approx(p[0]),
        "p95": pytest.approx(p[1]),
        "p99": pytest.approx(p[2]),
        "mean": latency_sum / requests if requests else 0.0,
        "active": active,
        "opened": opened,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "bytes_in_rate": bytes_in / seconds,
        "bytes_out_rate": bytes_out / seconds,
    }


NOTHING = expected(
    start=M5, seconds=60, requests=0, by_status={}, errors=0, p=(0, 0, 0), latency_sum=0,
    active=0, opened=0, bytes_in=0, bytes_out=0, reports=0, sidecars=0,
)  # fmt: skip

# One hour back from NOW starts at T0 - 3240 (every minute of the timeline; 3570 s long);
# five minutes at M1 (270 s); one minute at M5 (30 s, rated over the 60 s minimum).
A_1H = expected(
    start=T0 - 3240, seconds=3570, requests=110, by_status={"2xx": 94, "4xx": 4, "5xx": 12},
    errors=12,
    # 110 in b3 x10, b4 x20, b5 x30, b8 x40, b12 x10: rank 55 in b5 (20..30] after 30,
    # rank 104.5 and 108.9 in b12 (300..500] after 100.
    p=(20 + 10 * 25 / 30, 300 + 200 * 4.5 / 10, 300 + 200 * 8.9 / 10),
    latency_sum=7030, active=1, opened=7, bytes_in=10500, bytes_out=20700, reports=5, sidecars=1,
)  # fmt: skip
A_5M = expected(
    start=M1, seconds=270, requests=80, by_status={"2xx": 66, "4xx": 4, "5xx": 10}, errors=10,
    # b5 x30, b8 x40, b12 x10: rank 40 in b8 (75..100] after 30; 76 and 79.2 in b12 after 70.
    p=(75 + 25 * 10 / 40, 300 + 200 * 6 / 10, 300 + 200 * 9.2 / 10),
    latency_sum=6650, active=1, opened=3, bytes_in=7500, bytes_out=14700, reports=3, sidecars=1,
)  # fmt: skip
A_1M = expected(
    start=M5, seconds=60, requests=10, by_status={"5xx": 10}, errors=10,
    p=(300 + 200 * 5 / 10, 300 + 200 * 9.5 / 10, 300 + 200 * 9.9 / 10),
    latency_sum=2500, active=1, opened=1, bytes_in=500, bytes_out=700, reports=1, sidecars=1,
)  # fmt: skip
ORDERS_1H = expected(
    start=T0 - 3240, seconds=3570, requests=210, by_status={"2xx": 194, "4xx": 4, "5xx": 12},
    errors=12,
    # b2 x50, b3 x10, b4 x20, b5 x30, b8 x40, b9 x50, b12 x10: rank 105 in b5 after 80;
    # 199.5 in b9 (100..150] after 150; 207.9 in b12 after 200.
    p=(20 + 10 * 25 / 30, 100 + 50 * 49.5 / 50, 300 + 200 * 7.9 / 10),
    # The gauge: each sidecar's latest (A 1 at T0 + 310, B 6 at T0 + 320).
    latency_sum=13030, active=7, opened=14, bytes_in=20500, bytes_out=40700, reports=7,
    sidecars=2,
)  # fmt: skip
ORDERS_5M = expected(
    start=M1, seconds=270, requests=180, by_status={"2xx": 166, "4xx": 4, "5xx": 10}, errors=10,
    # b2 x50, b5 x30, b8 x40, b9 x50, b12 x10: rank 90 in b8 after 80; 171 and 178.2 in b12.
    p=(75 + 25 * 10 / 40, 300 + 200 * 1 / 10, 300 + 200 * 8.2 / 10),
    latency_sum=12650, active=7, opened=10, bytes_in=17500, bytes_out=34700, reports=5,
    sidecars=2,
)  # fmt: skip
ORDERS_1M = expected(
    start=M5, seconds=60, requests=10, by_status={"5xx": 10}, errors=10,
    p=(400, 490, 498), latency_sum=2500, active=7, opened=1, bytes_in=500, bytes_out=700,
    reports=2, sidecars=2,
)  # fmt: skip
# What another replica sees: the written minutes M0..M4 only (A's last written gauge is 2 at
# T0 + 250, B's 7 at T0 + 200).
ORDERS_1H_WRITTEN = expected(
    start=T0 - 3240, seconds=3570, requests=200, by_status={"2xx": 194, "4xx": 4, "5xx": 2},
    errors=2,
    # b2 x50, b3 x10, b4 x20, b5 x30, b8 x40, b9 x50: rank 100 in b5 after 80; 190 and 198 in
    # b9 after 150.
    p=(20 + 10 * 20 / 30, 100 + 50 * 40 / 50, 100 + 50 * 48 / 50),
    latency_sum=10530, active=9, opened=13, bytes_in=20000, bytes_out=40000, reports=5,
    sidecars=2,
)  # fmt: skip


async def test_one_sidecar_over_one_five_and_sixty_minutes(mesh: Mesh) -> None:
    await play(mesh)
    assert summary(await mesh.metrics(pb.TIME_RANGE_1H, service_id=SID_A)) == A_1H
    assert summary(await mesh.metrics(pb.TIME_RANGE_5M, service_id=SID_A)) == A_5M
    assert summary(await mesh.metrics(pb.TIME_RANGE_1M, service_id=SID_A)) == A_1M
    got = await mesh.metrics(pb.TIME_RANGE_1H, service_id=SID_A)
    assert (got.service_id, got.service_name, got.time_range) == (SID_A, "orders", 4)
    assert got.revision == await mesh.store.current_revision()
    # A service token reads its own instance the same way.
    assert summary(await mesh.metrics(pb.TIME_RANGE_5M, ORDERS, service_id=SID_A)) == A_5M


async def test_a_service_aggregates_its_sidecars(mesh: Mesh) -> None:
    await play(mesh)
    assert summary(await mesh.metrics(pb.TIME_RANGE_1H, service_name="orders")) == ORDERS_1H
    assert summary(await mesh.metrics(pb.TIME_RANGE_5M, service_name="orders")) == ORDERS_5M
    assert summary(await mesh.metrics(pb.TIME_RANGE_1M, service_name="orders")) == ORDERS_1M
    # A service token without a name or id: its own service.
    own = await mesh.metrics(pb.TIME_RANGE_1H, ORDERS)
    assert (own.service_id, own.service_name) == ("", "orders")
    assert summary(own) == ORDERS_1H
    # B alone in the last minute: an idle report (no requests, no buckets) still counts.
    b = summary(await mesh.metrics(pb.TIME_RANGE_1M, service_id=SID_B))
    assert b == NOTHING | {"has_reports": True, "reports": 1, "sidecars": 1, "active": 6}


async def test_only_the_asked_sections_are_set(mesh: Mesh) -> None:
    await play(mesh)
    got = await mesh.metrics(pb.TIME_RANGE_1H, service_id=SID_A, metrics=[pb.METRIC_KIND_ERRORS])
    assert got.metrics.HasField("errors") and got.metrics.errors.total == 12
    assert not got.metrics.HasField("requests") and not got.metrics.HasField("latency")


async def test_a_window_without_reports_is_all_zero(mesh: Mesh) -> None:
    await play(mesh)
    for time_range, start in (
        (pb.TIME_RANGE_1M, M5),
        (pb.TIME_RANGE_5M, M1),
        (pb.TIME_RANGE_1H, T0 - 3240),
    ):
        seconds = max(NOW - start, 60)
        want = expected(
            start=start, seconds=seconds, requests=0, by_status={}, errors=0, p=(0, 0, 0),
            latency_sum=0, active=0, opened=0, bytes_in=0, bytes_out=0, reports=0, sidecars=0,
        )  # fmt: skip
        for request in ({"service_id": SID_C}, {"service_name": "billing"}):
            got = await mesh.metrics(time_range, **request)
            assert summary(got) == want, (time_range, request)
            assert not got.has_reports and got.service_name == "billing"
    # A service no sidecar ever connected for: zero as well, nothing invented.
    nobody = await mesh.metrics(pb.TIME_RANGE_1H, service_name="payments")
    assert not nobody.has_reports and nobody.metrics.requests.total == 0


async def test_another_replica_sees_the_written_minutes_only(mesh: Mesh) -> None:
    await play(mesh)
    other = mesh.other.observer
    assert (
        summary(await mesh.metrics(pb.TIME_RANGE_1H, service_name="orders", on=other))
        == ORDERS_1H_WRITTEN
    )
    # The current minute (M5) is on the holding replica only, not written yet.
    assert summary(await mesh.metrics(pb.TIME_RANGE_1M, service_name="orders", on=other)) == (
        NOTHING
    )
    assert summary(await mesh.metrics(pb.TIME_RANGE_1M, service_name="orders")) == ORDERS_1M
    # Once M5 is over and written, every replica answers alike.
    at(mesh.clock, T0 + 361)
    mesh.holder.tick()
    await flushed(mesh.holder.writer, mesh.clock)
    for observer in (mesh.holder.observer, other):
        got = await mesh.metrics(pb.TIME_RANGE_1H, service_name="orders", on=observer)
        assert (got.metrics.requests.total, got.reports, got.metrics.connections.active) == (
            210,
            7,
            7,
        )
    assert set(await mesh.stored_minutes("orders", SID_A)) == {M0, M0 + 2, M0 + 4, M0 + 5}
    assert set(await mesh.stored_minutes("orders", SID_B)) == {M0 + 3, M0 + 5}


async def test_a_late_report_counts_in_the_next_minute_and_never_overwrites(mesh: Mesh) -> None:
    at(mesh.clock, T0 + 1)
    a = mesh.holder.connect(SID_A, mesh.instances)
    at(mesh.clock, T0 + 30)
    a.receive(report(0, 30, requests=5, latency_buckets=hist(b0=5), connections_active=1))
    at(mesh.clock, T0 + 61)
    a.tick()  # M0 is over: written
    await flushed(mesh.holder.writer, mesh.clock)
    m0 = await mesh.store.get(keys.usage_key("orders", SID_A, M0, a.stream))
    assert m0 is not None and spb.UsageMinute.FromString(m0.value).requests == 5

    # A report of M0 arriving in M1: merged into M1, the first minute not written yet.
    at(mesh.clock, T0 + 70)
    a.receive(report(30, 55, requests=7, latency_buckets=hist(b1=7), connections_active=9))
    assert [(r.minute, r.requests) for r in a.unflushed()] == [(M0 + 1, 7)]
    # The holder counts it (in M1); the other replica sees M0 only until M1 is written.
    await caught_up(mesh.store, mesh.holder, mesh.other)
    at(mesh.clock, T0 + 100)
    five = await mesh.metrics(pb.TIME_RANGE_5M, service_id=SID_A)
    assert (five.reports, five.metrics.requests.total, five.metrics.connections.active) == (
        2,
        12,
        9,
    )
    one = await mesh.metrics(pb.TIME_RANGE_1M, service_id=SID_A)  # M1 only
    assert (one.reports, one.metrics.requests.total) == (1, 7)
    elsewhere = await mesh.metrics(pb.TIME_RANGE_5M, service_id=SID_A, on=mesh.other.observer)
    assert (elsewhere.reports, elsewhere.metrics.requests.total) == (1, 5)

    at(mesh.clock, T0 + 121)
    a.tick()
    await flushed(mesh.holder.writer, mesh.clock)
    # Two minutes later, another late one of M0: M1 is written too, so it lands in M2, a
    # minute already over: written at once.
    at(mesh.clock, T0 + 200)
    a.receive(report(55, 59, requests=1, latency_buckets=hist(b2=1)))
    assert a.unflushed() == []
    await flushed(mesh.holder.writer, mesh.clock)
    stored = await mesh.stored_minutes("orders", SID_A)
    assert {m: (r.reports, r.requests) for m, r in stored.items()} == {
        M0: (1, 5),
        M0 + 1: (1, 7),
        M0 + 2: (1, 1),
    }
    again = await mesh.store.get(keys.usage_key("orders", SID_A, M0, a.stream))
    assert again is not None and again.mod_revision == m0.mod_revision  # written once


async def test_who_may_read_which_metrics(mesh: Mesh) -> None:
    await play(mesh)
    billing = Principal("billing", Role.SERVICE)
    with pytest.raises(PermissionDenied):  # another service's instance
        await mesh.metrics(pb.TIME_RANGE_1H, billing, service_id=SID_A)
    with pytest.raises(PermissionDenied):  # another service by name
        await mesh.metrics(pb.TIME_RANGE_1H, billing, service_name="orders")
    with pytest.raises(InvalidSidecarConfiguration) as invalid:  # admin names no scope
        await mesh.metrics(pb.TIME_RANGE_1H, ADMIN)
    assert [v.field for v in invalid.value.violations] == ["serviceName"]
    with pytest.raises(InstanceNotRegistered):
        await mesh.metrics(pb.TIME_RANGE_1H, service_id="00000000-0000-4000-8000-000000000000")
    # billing's own token reads its own (empty) service.
    own = await mesh.metrics(pb.TIME_RANGE_1H, billing)
    assert own.service_name == "billing" and not own.has_reports


async def test_a_reconnection_within_the_minute_keeps_both_streams_reports(mesh: Mesh) -> None:
    at(mesh.clock, T0 + 1)
    first = mesh.holder.connect(SID_A, mesh.instances)
    at(mesh.clock, T0 + 10)
    first.receive(report(0, 10, requests=5, latency_buckets=hist(b0=5)))
    at(mesh.clock, T0 + 20)
    first.disconnected(replaced=False)  # the stream ends: its minutes are written at once
    del mesh.holder.sessions[SID_A]
    await flushed(mesh.holder.writer, mesh.clock)
    await caught_up(mesh.store, mesh.holder, mesh.other)
    previous = mesh.other.status.session(SID_A)
    assert previous is not None and not previous.connected
    # It reconnects to the other replica, as the distributor there would open it.
    second = Session(
        SID_A,
        "orders",
        Workload("orders"),
        "1.4.2",
        clock=mesh.clock,
        writer=mesh.other.writer,
        previous=previous,
    )
    at(mesh.clock, T0 + 40)
    second.receive(report(20, 40, requests=7, latency_buckets=hist(b0=7)))
    at(mesh.clock, T0 + 61)
    second.tick()
    await flushed(mesh.other.writer, mesh.clock)
    got = await mesh.metrics(pb.TIME_RANGE_5M, service_id=SID_A)
    assert (got.reports, got.metrics.requests.total) == (2, 12)
