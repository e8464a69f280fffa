"""Sidecar metrics: reports merged into per-minute records, records answered as a window.
Pure: no I/O, no store, no clock (``now`` is an argument).

A sidecar sends a ``MetricsReport`` every interval over its Connect stream; the replica holding
the stream checks it (``report_errors``), then merges it into that sidecar's ``UsageMinute`` of
the minute its ``windowEnd`` falls in (``add_report``; the caller picks and keys the record, and
sets its serviceId, serviceName and minute). A metrics request reads the records of the window's
minutes and answers ``window(...)``. Counts merge by adding; the connections gauge is a sidecar's
value at its latest ``windowEnd``; latency percentiles come from the merged histogram of the
LATENCY BUCKETS (sidecar.proto). Nothing is invented: no record, every number 0.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence

from google.protobuf import timestamp_pb2

from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2 as pb
from lucid_cp.api.lucid.sidecar.v1.storage_pb2 import UsageMinute
from lucid_cp.errors import FieldViolation

# Upper bounds in milliseconds, inclusive; one overflow bucket (> 60000) follows.
LATENCY_BOUNDS_MS: tuple[float, ...] = (
    1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 2000, 5000, 10000, 30000, 60000,
)  # fmt: skip
BUCKETS = len(LATENCY_BOUNDS_MS) + 1  # 21

TIME_RANGE_SECONDS: dict[int, int] = {
    pb.TIME_RANGE_1M: 60,
    pb.TIME_RANGE_5M: 5 * 60,
    pb.TIME_RANGE_15M: 15 * 60,
    pb.TIME_RANGE_1H: 3600,
    pb.TIME_RANGE_6H: 6 * 3600,
    pb.TIME_RANGE_24H: 24 * 3600,
}

STATUS_CLASSES = frozenset({"1xx", "2xx", "3xx", "4xx", "5xx"})
MAX_REPORT_WINDOW_SECONDS = 3600

_ALL_KINDS = (
    pb.METRIC_KIND_REQUESTS,
    pb.METRIC_KIND_LATENCY,
    pb.METRIC_KIND_ERRORS,
    pb.METRIC_KIND_CONNECTIONS,
    pb.METRIC_KIND_BANDWIDTH,
)
_NANOS = 1_000_000_000


def _ns(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * _NANOS + ts.nanos


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    whole = math.floor(seconds)
    nanos = round((seconds - whole) * _NANOS)
    if nanos >= _NANOS:  # rounding carried into the next second
        whole, nanos = whole + 1, nanos - _NANOS
    return timestamp_pb2.Timestamp(seconds=whole, nanos=nanos)


# --- reports ------------------------------------------------------------------------------------


def report_errors(report: pb.MetricsReport, prefix: str = "report.") -> list[FieldViolation]:
    """What makes a report unmergeable, beyond its declared field rules (checked before):
    windowEnd after windowStart and at most an hour later; latencyBuckets absent (only without
    requests) or 21 counts summing to ``requests``; byStatus keys "1xx".."5xx" with counts >= 0
    summing to at most ``requests``; errors at most ``requests``."""
    out: list[FieldViolation] = []
    span = _ns(report.window_end) - _ns(report.window_start)
    if span <= 0:
        out.append(FieldViolation(f"{prefix}windowEnd", "must be after windowStart"))
    elif span > MAX_REPORT_WINDOW_SECONDS * _NANOS:
        out.append(
            FieldViolation(
                f"{prefix}windowEnd",
                f"must be at most {MAX_REPORT_WINDOW_SECONDS} s after windowStart",
            )
        )
    buckets = report.latency_buckets
    if len(buckets) == 0:
        if report.requests > 0:
            out.append(
                FieldViolation(
                    f"{prefix}latencyBuckets", f"must have {BUCKETS} counts when requests > 0"
                )
            )
    elif len(buckets) != BUCKETS:
        out.append(
            FieldViolation(f"{prefix}latencyBuckets", f"must have exactly {BUCKETS} counts or none")
        )
    elif sum(buckets) != report.requests:
        out.append(
            FieldViolation(
                f"{prefix}latencyBuckets",
                f"counts sum to {sum(buckets)}, must equal requests ({report.requests})",
            )
        )
    status_ok = True
    for key in sorted(report.by_status):
        if key not in STATUS_CLASSES:
            out.append(
                FieldViolation(f"{prefix}byStatus", "keys must be 1xx, 2xx, 3xx, 4xx or 5xx")
            )
            status_ok = False
            break
        if report.by_status[key] < 0:
            out.append(FieldViolation(f"{prefix}byStatus.{key}", "must be >= 0"))
            status_ok = False
    if status_ok and sum(report.by_status.values()) > report.requests:
        out.append(
            FieldViolation(
                f"{prefix}byStatus", f"counts sum to more than requests ({report.requests})"
            )
        )
    if report.errors > report.requests:
        out.append(FieldViolation(f"{prefix}errors", f"must be <= requests ({report.requests})"))
    return out


def minute_of(ts_seconds: float) -> int:
    """The minute (whole minutes since the Unix epoch) a time falls in. A report's record is
    ``minute_of(report.window_end.seconds)``."""
    return math.floor(ts_seconds / 60)


def add_report(minute: UsageMinute, report: pb.MetricsReport) -> None:
    """Merge a checked report (``report_errors`` empty) into one sidecar's record: counts add
    (latency buckets element-wise; a record without buckets takes the first report's 21), the
    connections gauge is the report's with the latest windowEnd (a tie: the one merged last).

    The caller picks the record: the sidecar's, of ``minute_of(report.window_end.seconds)`` (a
    report belongs to the minute its windowEnd falls in), with serviceId, serviceName and
    minute set by the caller; they are not touched here."""
    if report.latency_buckets:
        if not minute.latency_buckets:
            minute.latency_buckets.extend(report.latency_buckets)
        elif len(minute.latency_buckets) != len(report.latency_buckets):
            raise ValueError(
                f"latency buckets: record has {len(minute.latency_buckets)}, "
                f"report {len(report.latency_buckets)}"
            )
        else:
            for i, count in enumerate(report.latency_buckets):
                minute.latency_buckets[i] += count
    minute.reports += 1
    minute.requests += report.requests
    for key, count in report.by_status.items():
        minute.by_status[key] += count
    minute.errors += report.errors
    minute.latency_sum_ms += report.latency_sum_ms
    minute.connections_opened += report.connections_opened
    minute.bytes_in += report.bytes_in
    minute.bytes_out += report.bytes_out
    if not minute.HasField("connections_at") or _ns(report.window_end) >= _ns(
        minute.connections_at
    ):
        minute.connections_active = report.connections_active
        minute.connections_at.CopyFrom(report.window_end)


def stored_bytes_per_day(record: UsageMinute, key_len: int) -> int:
    """Store bytes one sidecar's records take over the 24 h they are kept (one a minute), for a
    record like ``record`` under keys of ``key_len`` bytes (values and keys; no store overhead)."""
    return 1440 * (record.ByteSize() + key_len)


# --- windows ------------------------------------------------------------------------------------


def quantile(buckets: Sequence[int], q: float) -> float:
    """The q-quantile (0 <= q <= 1), in milliseconds, of a LATENCY BUCKETS histogram, as
    Prometheus's histogram_quantile: the rank q * total falls in the first bucket whose
    cumulative count reaches it, interpolated linearly between the bucket's bounds (the first
    bucket's lower bound is 0; in the overflow bucket the answer is its lower bound, 60000).
    0 for an empty histogram."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} outside 0..1")
    if len(buckets) != BUCKETS:
        raise ValueError(f"{len(buckets)} buckets, expected {BUCKETS}")
    total = sum(buckets)
    if total <= 0:
        return 0.0
    rank = q * total
    below = 0
    for i, count in enumerate(buckets):
        if count > 0 and below + count >= rank:
            if i == len(LATENCY_BOUNDS_MS):
                return float(LATENCY_BOUNDS_MS[-1])
            lower = 0.0 if i == 0 else float(LATENCY_BOUNDS_MS[i - 1])
            upper = float(LATENCY_BOUNDS_MS[i])
            return lower + (upper - lower) * (rank - below) / count
        below += count
    raise AssertionError("unreachable: the rank is at most the total")


def window_start_of(now: float, time_range: int) -> int:
    """Start of the window, in seconds: the first whole minute at or after now - the range."""
    seconds = TIME_RANGE_SECONDS.get(time_range)
    if seconds is None:
        raise ValueError(f"unknown time range {time_range}")
    return math.ceil((now - seconds) / 60) * 60


def window(
    minutes: Iterable[UsageMinute], *, now: float, time_range: int, kinds: Collection[int]
) -> pb.SidecarMetrics:
    """The metrics of the records of minutes starting in [windowStart, now] (others are
    skipped), windowStart being ``window_start_of(now, time_range)``. Rates are per second over
    now - windowStart (1 s if that is 0): the span the window's minutes cover, not the nominal
    range. Only the sections in ``kinds`` are set (empty: all). serviceId, serviceName and
    revision are the caller's."""
    start = window_start_of(now, time_range)
    requests = errors = reports = opened = bytes_in = bytes_out = 0
    latency_sum = 0.0
    by_status: dict[str, int] = {}
    buckets = [0] * BUCKETS
    sidecars: set[str] = set()
    # serviceId -> (connections_at in ns, minute, gauge): the latest one wins.
    gauges: dict[str, tuple[int, int, int]] = {}
    for record in minutes:
        if not start <= record.minute * 60 <= now:
            continue
        reports += record.reports
        if record.reports > 0:
            sidecars.add(record.service_id)
        requests += record.requests
        errors += record.errors
        opened += record.connections_opened
        bytes_in += record.bytes_in
        bytes_out += record.bytes_out
        latency_sum += record.latency_sum_ms
        for key, count in record.by_status.items():
            by_status[key] = by_status.get(key, 0) + count
        if len(record.latency_buckets) == BUCKETS:
            for i, count in enumerate(record.latency_buckets):
                buckets[i] += count
        if record.HasField("connections_at"):
            gauge = (_ns(record.connections_at), record.minute, record.connections_active)
            if gauge > gauges.get(record.service_id, (-1, -1, -1)):
                gauges[record.service_id] = gauge

    # Rates divide by the window's length, at least a minute: a report counts in the minute its
    # windowEnd falls in, so just after a minute starts its reports reach back before `start`.
    seconds = max(now - start, 60.0)
    out = pb.SidecarMetrics(
        time_range=time_range,  # type: ignore[arg-type]
        timestamp=_timestamp(now),
        window_start=timestamp_pb2.Timestamp(seconds=start),
        has_reports=reports > 0,
        reports=reports,
        sidecars=len(sidecars),
    )
    wanted = set(kinds) or set(_ALL_KINDS)
    sections = out.metrics
    if pb.METRIC_KIND_REQUESTS in wanted:
        sections.requests.SetInParent()
        sections.requests.total = requests
        sections.requests.rate = requests / seconds
        sections.requests.by_status.update(by_status)
    if pb.METRIC_KIND_LATENCY in wanted:
        sections.latency.SetInParent()
        sections.latency.p50 = quantile(buckets, 0.50)
        sections.latency.p95 = quantile(buckets, 0.95)
        sections.latency.p99 = quantile(buckets, 0.99)
        sections.latency.mean = latency_sum / requests if requests else 0.0
    if pb.METRIC_KIND_ERRORS in wanted:
        sections.errors.SetInParent()
        sections.errors.total = errors
        sections.errors.rate = errors / seconds
    if pb.METRIC_KIND_CONNECTIONS in wanted:
        sections.connections.SetInParent()
        sections.connections.active = sum(gauge for _, _, gauge in gauges.values())
        sections.connections.total = opened
    if pb.METRIC_KIND_BANDWIDTH in wanted:
        sections.bandwidth.SetInParent()
        sections.bandwidth.bytes_in = bytes_in
        sections.bandwidth.bytes_out = bytes_out
        sections.bandwidth.bytes_in_rate = bytes_in / seconds
        sections.bandwidth.bytes_out_rate = bytes_out / seconds
    out.metrics.SetInParent()
    return out
