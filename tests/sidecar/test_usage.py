"""lucid_cp.sidecar.usage: report checks, merging reports into minutes, percentiles, windows,
and the store bytes one sidecar's records take over a day. Exact numbers throughout."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2 as pb
from lucid_cp.api.lucid.sidecar.v1.storage_pb2 import UsageMinute
from lucid_cp.errors import FieldViolation
from lucid_cp.sidecar import keys
from lucid_cp.sidecar.usage import (
    BUCKETS,
    LATENCY_BOUNDS_MS,
    TIME_RANGE_SECONDS,
    add_report,
    minute_of,
    quantile,
    report_errors,
    stored_bytes_per_day,
    window,
)

SID_A = "550e8400-e29b-41d4-a716-446655440000"
SID_B = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
SID_C = "6ba7b811-9dad-11d1-80b4-00c04fd430c8"


def ts(seconds: float) -> Timestamp:
    whole = int(seconds // 1)
    return Timestamp(seconds=whole, nanos=round((seconds - whole) * 1e9))


def hist(**at: int) -> list[int]:
    """21 counts, zero but for ``b<index>=count``."""
    counts = [0] * BUCKETS
    for name, count in at.items():
        counts[int(name[1:])] = count
    return counts


def report(start: float = 1000.0, end: float = 1010.0, **over: Any) -> pb.MetricsReport:
    fields: dict[str, Any] = {
        "requests": 10,
        "by_status": {"2xx": 9, "5xx": 1},
        "errors": 1,
        "latency_buckets": hist(b3=10),
        "latency_sum_ms": 80.0,
        "connections_active": 4,
        "connections_opened": 2,
        "bytes_in": 1000,
        "bytes_out": 5000,
        "healthy": True,
    }
    fields.update(over)
    return pb.MetricsReport(window_start=ts(start), window_end=ts(end), **fields)


def record(sid: str, minute: int, **over: Any) -> UsageMinute:
    fields: dict[str, Any] = {"service_id": sid, "service_name": "orders", "minute": minute}
    fields.update(over)
    return UsageMinute(**fields)


# --- constants ----------------------------------------------------------------------------------


def test_bounds_match_the_proto() -> None:
    assert LATENCY_BOUNDS_MS == (
        1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 2000, 5000, 10000,
        30000, 60000,
    )  # fmt: skip
    assert BUCKETS == 21
    assert TIME_RANGE_SECONDS == {1: 60, 2: 300, 3: 900, 4: 3600, 5: 21600, 6: 86400}
    # Every TimeRange but UNSPECIFIED has a length.
    assert set(TIME_RANGE_SECONDS) == set(pb.TimeRange.values()) - {pb.TIME_RANGE_UNSPECIFIED}


# --- report_errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rep", "expected"),
    [
        (report(), []),
        (report(requests=0, by_status={}, errors=0, latency_buckets=[], latency_sum_ms=0), []),
        (report(by_status={"2xx": 0}), []),
        (report(start=1000.0, end=4600.0), []),  # exactly an hour
        (report(start=1000.0, end=1000.0), [("report.windowEnd", "must be after windowStart")]),
        (report(start=1000.0, end=999.5), [("report.windowEnd", "must be after windowStart")]),
        (
            report(start=1000.0, end=4600.001),
            [("report.windowEnd", "must be at most 3600 s after windowStart")],
        ),
        (
            report(latency_buckets=[]),
            [("report.latencyBuckets", "must have 21 counts when requests > 0")],
        ),
        (
            report(latency_buckets=[10] + [0] * 19),
            [("report.latencyBuckets", "must have exactly 21 counts or none")],
        ),
        (
            report(latency_buckets=hist(b3=9)),
            [("report.latencyBuckets", "counts sum to 9, must equal requests (10)")],
        ),
        (
            report(requests=0, by_status={}, errors=0, latency_buckets=hist()),
            [],  # 21 zero counts: allowed, they sum to requests
        ),
        (
            report(by_status={"2xx": 9, "200": 1}),
            [("report.byStatus", "keys must be 1xx, 2xx, 3xx, 4xx or 5xx")],
        ),
        (
            report(by_status={"2xx": 11, "5xx": -1}),
            [("report.byStatus.5xx", "must be >= 0")],
        ),
        (
            report(by_status={"2xx": 10, "5xx": 1}),
            [("report.byStatus", "counts sum to more than requests (10)")],
        ),
        (report(errors=11), [("report.errors", "must be <= requests (10)")]),
        (
            report(start=1010.0, end=1000.0, errors=11, latency_buckets=hist(b0=1)),
            [
                ("report.windowEnd", "must be after windowStart"),
                ("report.latencyBuckets", "counts sum to 1, must equal requests (10)"),
                ("report.errors", "must be <= requests (10)"),
            ],
        ),
    ],
)
def test_report_errors(rep: pb.MetricsReport, expected: list[tuple[str, str]]) -> None:
    assert [(v.field, v.description) for v in report_errors(rep)] == expected


def test_report_errors_prefix() -> None:
    assert report_errors(report(errors=11), prefix="") == [
        FieldViolation("errors", "must be <= requests (10)")
    ]


# --- minutes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "minute"),
    [(0, 0), (59.999, 0), (60, 1), (119.5, 1), (-0.5, -1), (1_700_000_000.5, 28_333_333)],
)
def test_minute_of(seconds: float, minute: int) -> None:
    assert minute_of(seconds) == minute


def test_add_report_adds_counts() -> None:
    minute = record(SID_A, 16)
    add_report(minute, report(960.0, 970.0))
    add_report(
        minute,
        report(
            970.0,
            980.0,
            requests=5,
            by_status={"2xx": 3, "4xx": 2},
            errors=0,
            latency_buckets=hist(b0=1, b3=4),
            latency_sum_ms=20.5,
            connections_active=6,
            connections_opened=1,
            bytes_in=10,
            bytes_out=20,
        ),
    )
    assert minute == record(
        SID_A,
        16,
        reports=2,
        requests=15,
        by_status={"2xx": 12, "4xx": 2, "5xx": 1},
        errors=1,
        latency_buckets=hist(b0=1, b3=14),
        latency_sum_ms=100.5,
        connections_active=6,
        connections_at=ts(980.0),
        connections_opened=3,
        bytes_in=1010,
        bytes_out=5020,
    )


def test_add_report_buckets_stay_empty_until_a_report_brings_them() -> None:
    minute = record(SID_A, 16)
    idle = report(requests=0, by_status={}, errors=0, latency_buckets=[], latency_sum_ms=0)
    add_report(minute, idle)
    assert list(minute.latency_buckets) == []
    add_report(minute, report())
    assert list(minute.latency_buckets) == hist(b3=10)
    add_report(minute, idle)
    assert list(minute.latency_buckets) == hist(b3=10)
    assert (minute.reports, minute.requests) == (3, 10)


def test_add_report_refuses_mismatched_buckets() -> None:
    minute = record(SID_A, 16, latency_buckets=[1, 2, 3])
    with pytest.raises(ValueError, match="latency buckets"):
        add_report(minute, report())


@pytest.mark.parametrize(
    ("ends", "active", "at"),
    [
        ([(970.0, 4), (980.0, 6)], 6, 980.0),  # in order
        ([(980.0, 6), (970.0, 4)], 6, 980.0),  # late arrival does not win
        ([(980.0, 6), (980.0, 9)], 9, 980.0),  # a tie: the one merged last
        ([(979.999, 6), (979.9995, 2)], 2, 979.9995),  # nanoseconds count
    ],
)
def test_add_report_gauge_is_the_latest_window_end(
    ends: list[tuple[float, int]], active: int, at: float
) -> None:
    minute = record(SID_A, 16)
    for end, gauge in ends:
        add_report(minute, report(end - 10, end, connections_active=gauge))
    assert (minute.connections_active, minute.connections_at) == (active, ts(at))


# --- quantile -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("buckets", "q", "expected"),
    [
        (hist(), 0.5, 0.0),
        (hist(), 0.99, 0.0),
        (hist(b0=10), 0.5, 0.5),  # first bucket: 0..1
        (hist(b3=10), 0.0, 5.0),  # (5, 10]
        (hist(b3=10), 0.5, 7.5),
        (hist(b3=10), 0.99, 9.95),
        (hist(b3=10), 1.0, 10.0),
        (hist(b0=4, b2=4), 0.5, 1.0),  # rank at a bucket's end: its upper bound
        (hist(b0=4, b2=4), 0.75, 3.5),  # (2, 5]: 2 + 3 * 2/4
        (hist(b1=1, b19=1), 0.0, 1.0),  # empty buckets before are skipped
        (hist(b5=90, b10=10), 0.95, 175.0),  # (150, 200]: 150 + 50 * 5/10
        (hist(b8=99, b20=1), 0.99, 100.0),
        (hist(b8=99, b20=1), 0.995, 60000.0),  # overflow: its lower bound
        (hist(b20=3), 0.5, 60000.0),
        (hist(b19=2), 0.5, 45000.0),  # (30000, 60000]
    ],
)
def test_quantile(buckets: list[int], q: float, expected: float) -> None:
    assert quantile(buckets, q) == expected


@pytest.mark.parametrize(("buckets", "q"), [(hist(b0=1), 1.5), (hist(b0=1), -0.1), ([1] * 20, 0.5)])
def test_quantile_refuses(buckets: list[int], q: float) -> None:
    with pytest.raises(ValueError):
        quantile(buckets, q)


# --- window -------------------------------------------------------------------------------------

NOW = 600 * 60.0  # a minute boundary: 36000 s


def totals(metrics: pb.SidecarMetrics) -> tuple[int, float]:
    return metrics.metrics.requests.total, metrics.metrics.requests.rate


@pytest.mark.parametrize(
    ("now", "time_range", "start", "included"),
    [
        # On a minute boundary: windowStart = now - T exactly; both ends included.
        (NOW, pb.TIME_RANGE_5M, 35700, [595, 596, 599, 600]),
        (NOW, pb.TIME_RANGE_1M, 35940, [599, 600]),
        # 30 s past: windowStart is rounded up to the next whole minute.
        (NOW + 30, pb.TIME_RANGE_5M, 35760, [596, 599, 600]),
        (NOW + 30, pb.TIME_RANGE_1M, 36000, [600]),
        (NOW - 0.5, pb.TIME_RANGE_1M, 35940, [599]),
        (NOW, pb.TIME_RANGE_1H, 32400, [540, 594, 595, 596, 599, 600]),
    ],
)
def test_window_boundaries(now: float, time_range: int, start: int, included: list[int]) -> None:
    minutes = [539, 540, 594, 595, 596, 599, 600, 601]
    records = [record(SID_A, m, reports=1, requests=m) for m in minutes]
    got = window(records, now=now, time_range=time_range, kinds=[])
    assert got.window_start == Timestamp(seconds=start)
    assert got.timestamp == ts(now)
    assert got.time_range == time_range
    assert got.reports == len(included)
    assert totals(got) == (sum(included), sum(included) / max(now - start, 60.0))


def test_window_rates_over_the_covered_seconds() -> None:
    records = [
        record(
            SID_A,
            596,
            reports=6,
            requests=540,
            errors=27,
            bytes_in=2700,
            bytes_out=5400,
            connections_opened=9,
        )
    ]
    got = window(records, now=NOW + 30, time_range=pb.TIME_RANGE_5M, kinds=[])
    # windowStart 35760, now 36030: 270 s.
    m = got.metrics
    assert (m.requests.total, m.requests.rate) == (540, 2.0)
    assert (m.errors.total, m.errors.rate) == (27, 0.1)
    assert (m.bandwidth.bytes_in, m.bandwidth.bytes_in_rate) == (2700, 10.0)
    assert (m.bandwidth.bytes_out, m.bandwidth.bytes_out_rate) == (5400, 20.0)
    assert m.connections.total == 9


@pytest.mark.parametrize(
    "records",
    [[], [record(SID_A, 594, reports=3, requests=30, connections_active=5)]],
    ids=["no records", "only outside the window"],
)
def test_window_empty_is_all_zero(records: list[UsageMinute]) -> None:
    got = window(records, now=NOW, time_range=pb.TIME_RANGE_5M, kinds=[])
    expected = pb.SidecarMetrics(
        time_range=pb.TIME_RANGE_5M,
        timestamp=ts(NOW),
        window_start=Timestamp(seconds=35700),
        has_reports=False,
        reports=0,
        sidecars=0,
        metrics=pb.MetricsSections(
            requests=pb.RequestMetrics(),
            latency=pb.LatencyMetrics(),
            errors=pb.ErrorMetrics(),
            connections=pb.ConnectionMetrics(),
            bandwidth=pb.BandwidthMetrics(),
        ),
    )
    assert got == expected
    for section in ("requests", "latency", "errors", "connections", "bandwidth"):
        assert got.metrics.HasField(section)


def test_window_merges_sidecars() -> None:
    records = [
        # A: two minutes; the later gauge (7) wins.
        record(
            SID_A,
            595,
            reports=6,
            requests=100,
            by_status={"2xx": 95, "5xx": 5},
            errors=5,
            latency_buckets=hist(b3=50, b4=50),
            latency_sum_ms=1200.0,
            connections_active=5,
            connections_at=ts(595 * 60 + 50),
            connections_opened=10,
        ),
        record(
            SID_A,
            596,
            reports=6,
            requests=100,
            by_status={"2xx": 100, "4xx": 0},
            latency_buckets=hist(b4=100),
            latency_sum_ms=1500.0,
            connections_active=7,
            connections_at=ts(596 * 60 + 10),
            connections_opened=4,
        ),
        # B: its latest record says 0 open.
        record(
            SID_B,
            597,
            reports=1,
            requests=0,
            connections_active=0,
            connections_at=ts(597 * 60 + 59.5),
        ),
        record(
            SID_B,
            596,
            reports=2,
            requests=200,
            by_status={"2xx": 200},
            latency_buckets=hist(b4=100, b20=100),
            latency_sum_ms=7_000_000.0,
            connections_active=3,
            connections_at=ts(596 * 60 + 30),
            connections_opened=1,
        ),
        # C: outside the window; counts nothing.
        record(
            SID_C,
            594,
            reports=6,
            requests=1000,
            connections_active=100,
            connections_at=ts(594 * 60 + 10),
        ),
    ]
    got = window(records, now=NOW, time_range=pb.TIME_RANGE_5M, kinds=[])
    assert (got.has_reports, got.reports, got.sidecars) == (True, 15, 2)
    m = got.metrics
    assert m.requests == pb.RequestMetrics(
        total=400, rate=400 / 300, by_status={"2xx": 395, "4xx": 0, "5xx": 5}
    )
    # Merged: b3=50, b4=250, b20=100 of 400. p50: rank 200 in (10, 20]: 10 + 10 * 150/250.
    # p95, p99: in the overflow bucket.
    assert m.latency == pb.LatencyMetrics(
        p50=16.0, p95=60000.0, p99=60000.0, mean=(1200.0 + 1500.0 + 7_000_000.0) / 400
    )
    assert m.errors == pb.ErrorMetrics(total=5, rate=5 / 300)
    assert m.connections == pb.ConnectionMetrics(active=7, total=15)


def test_window_sidecar_count_ignores_records_without_reports() -> None:
    records = [record(SID_A, 599, reports=1, requests=1), record(SID_B, 599)]
    got = window(records, now=NOW, time_range=pb.TIME_RANGE_5M, kinds=[])
    assert (got.has_reports, got.reports, got.sidecars) == (True, 1, 1)


ALL = ("requests", "latency", "errors", "connections", "bandwidth")


@pytest.mark.parametrize(
    ("kinds", "present"),
    [
        ([], ALL),
        (list(range(1, 6)), ALL),
        ([pb.METRIC_KIND_REQUESTS], ("requests",)),
        ([pb.METRIC_KIND_BANDWIDTH, pb.METRIC_KIND_LATENCY], ("latency", "bandwidth")),
        ([pb.METRIC_KIND_CONNECTIONS, pb.METRIC_KIND_CONNECTIONS], ("connections",)),
        ([pb.METRIC_KIND_ERRORS], ("errors",)),
    ],
)
def test_window_kinds(kinds: list[int], present: tuple[str, ...]) -> None:
    records = [record(SID_A, 599, reports=1, requests=10, latency_buckets=hist(b0=10))]
    got = window(records, now=NOW, time_range=pb.TIME_RANGE_1M, kinds=kinds)
    assert tuple(s for s in ALL if got.metrics.HasField(s)) == present
    assert (got.reports, got.sidecars) == (1, 1)  # the header does not depend on kinds


def test_window_unknown_time_range() -> None:
    with pytest.raises(ValueError, match="time range"):
        window([], now=NOW, time_range=pb.TIME_RANGE_UNSPECIFIED, kinds=[])


def test_add_report_then_window_end_to_end() -> None:
    """Reports merged by minute of windowEnd, answered over a window."""
    records: dict[int, UsageMinute] = {}
    for end in (NOW - 120, NOW - 110, NOW - 60, NOW - 50, NOW):
        rep = report(end - 10, end)
        assert report_errors(rep) == []
        m = minute_of(rep.window_end.seconds)
        add_report(records.setdefault(m, record(SID_A, m)), rep)
    # The report ending at NOW belongs to minute 600, which starts at now: included.
    got = window(records.values(), now=NOW, time_range=pb.TIME_RANGE_1M, kinds=[])
    assert (got.reports, got.metrics.requests.total) == (3, 30)
    assert got.metrics.connections.active == 4
    assert got.metrics.latency.p50 == 7.5


# --- stored bytes -------------------------------------------------------------------------------


def realistic_minute() -> UsageMinute:
    """One busy sidecar's minute: 2,000 requests/s reported every 10 s, every status class,
    latencies mostly 2..20 ms with a long tail, ~1 GB moved."""
    buckets = [
        1200, 5400, 21000, 30500, 24000, 13000, 9800, 6100, 3500, 2400, 1300, 900, 600, 350,
        200, 120, 60, 25, 10, 4, 1,
    ]  # fmt: skip
    requests = sum(buckets)  # 120,470
    return UsageMinute(
        service_id=SID_A,
        service_name="a" * 50,
        minute=28_333_333,
        reports=6,
        requests=requests,
        by_status={
            "1xx": 12,
            "2xx": requests - 12 - 4100 - 3200 - 1157,
            "3xx": 4100,
            "4xx": 3200,
            "5xx": 1157,
        },
        errors=1290,
        latency_buckets=buckets,
        latency_sum_ms=2_712_345.678,
        connections_active=250,
        connections_at=Timestamp(seconds=1_700_000_030, nanos=123_456_789),
        connections_opened=4800,
        bytes_in=152_345_678,
        bytes_out=912_345_678,
    )


def test_stored_bytes_per_day() -> None:
    minute = realistic_minute()
    key = keys.usage_key(minute.service_name, minute.service_id, minute.minute, "0" * 16).decode()
    stored = UsageMinute()
    stored.CopyFrom(minute)
    for named_by_key in ("service_id", "service_name", "minute", "stream"):
        stored.ClearField(named_by_key)  # as the status writer stores it
    value_len = len(stored.SerializeToString())
    per_day = stored_bytes_per_day(stored, len(key.encode()))
    print(f"usage record {value_len} B + key {len(key)} B; per sidecar per day {per_day} B")
    assert per_day == 1440 * (value_len + len(key))
    assert (value_len, len(key), per_day) == (139, 138, 398_880)
    assert per_day < 512 * 1024
