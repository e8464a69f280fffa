"""Reads of the sidecars' state, on any replica: rollout status (the "applied" receipt), the
sidecar list (like ``istioctl proxy-status``), health, and metrics windows.

Rollout, list and health read the status index (session and replica records every replica
writes), so they count sidecars connected to every live replica. Metrics read the stored usage
minutes by range, plus this replica's not yet written minutes of the sidecars it holds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from typing import Protocol

from google.protobuf import timestamp_pb2

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as dpb
from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2 as pb
from lucid_cp.api.lucid.sidecar.v1 import storage_pb2 as spb
from lucid_cp.auth.tokens import Principal
from lucid_cp.clock import Clock
from lucid_cp.sidecar import keys, usage
from lucid_cp.sidecar.errors import (
    InstanceNotRegistered,
    InvalidSidecarConfiguration,
    SidecarResourceNotFound,
)
from lucid_cp.sidecar.ownership import addressed_service
from lucid_cp.sidecar.session import Session
from lucid_cp.sidecar.status import StatusIndex
from lucid_cp.store.base import KeyReader

CONNECTED = pb.HEALTH_CONDITION_CONNECTED
CONFIG_CURRENT = pb.HEALTH_CONDITION_CONFIG_CURRENT
SELF_HEALTHY = pb.HEALTH_CONDITION_SELF_HEALTHY
MISSED_REPORTS = 3  # a sidecar that reported within this many intervals counts as connected


class Instances(Protocol):
    def get(self, service_id: str) -> dpb.ServiceInstance | None: ...


class Revisions(Protocol):
    @property
    def revision(self) -> int: ...


def _ts(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def _seconds(ts: timestamp_pb2.Timestamp) -> float:
    return ts.ToNanoseconds() / 1e9


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def nacked(session: spb.SidecarSession) -> bool:
    """It NACKed a snapshot newer than the one it applied (keeping its last good one)."""
    return session.HasField("last_nack") and session.last_nack.version > session.applied_version


def read_usage(key: bytes, value: bytes) -> spb.UsageMinute | None:
    """A stored usage record with what its key says filled back in."""
    parsed = keys.parse_usage(key)
    if parsed is None:
        return None
    record = spb.UsageMinute.FromString(value)
    record.service_name, record.service_id, record.minute, record.stream = parsed
    return record


class Observer:
    def __init__(
        self,
        store: KeyReader,
        status: StatusIndex,
        instances: Instances,
        config_revisions: Collection[Revisions],
        local: Callable[[], Mapping[str, Session]],
        clock: Clock,
    ) -> None:
        self._store = store
        self._status = status
        self._instances = instances
        self._config_revisions = config_revisions
        self._local = local
        self._clock = clock

    # -- rollout -----------------------------------------------------------------------------

    def default_revision(self) -> int:
        """The latest mesh or sidecar configuration revision this replica has applied."""
        return max((r.revision for r in self._config_revisions), default=0)

    def rollout(self, revision: int | None) -> pb.RolloutStatus:
        n = revision or self.default_revision()
        replicas = self._status.replicas()
        out = pb.RolloutStatus(
            revision=n, replicas=sorted(replicas), read_revision=self._status.revision
        )
        out.checked_at.CopyFrom(_ts(self._clock.now()))
        latencies: list[float] = []
        for s in self._status.sessions():
            if not self._status.live(s):
                continue
            out.connected += 1
            evaluated = replicas[s.replica].evaluated_revision
            settled = s.applied_version == s.latest_version and not nacked(s)
            if s.applied_version >= n or (settled and evaluated >= n):
                out.applied += 1
                if s.applied_version >= n:
                    latencies.append(s.ack_latency_ms)
                continue
            stale = pb.StaleSidecar(
                service_id=s.service_id,
                service_name=s.service_name,
                replica=s.replica,
                applied_version=s.applied_version,
            )
            stale.since.CopyFrom(
                s.latest_sent_at if s.latest_version > s.applied_version else s.connected_since
            )
            if nacked(s):
                stale.nack.CopyFrom(s.last_nack)
                out.nacked += 1
            out.stale.append(stale)
        out.ack_p50_ms = percentile(latencies, 0.50)
        out.ack_p99_ms = percentile(latencies, 0.99)
        return out

    # -- the sidecar list and health ---------------------------------------------------------

    def _row(self, s: spb.SidecarSession) -> pb.SidecarStatus:
        now = self._clock.now()
        live = self._status.live(s)
        reported = s.HasField("last_report") and now - _seconds(s.last_report) <= (
            MISSED_REPORTS * max(s.report_interval, 1)
        )
        row = pb.SidecarStatus(
            service_id=s.service_id,
            service_name=s.service_name,
            build=s.build,
            connected=live or reported,
            replica=s.replica if live else "",
            applied_version=s.applied_version,
            latest_version=s.latest_version,
            self_healthy=s.self_healthy and s.HasField("last_report"),
            self_reason=s.self_reason,
        )
        if live:
            row.connected_since.CopyFrom(s.connected_since)
        for name in ("last_report", "last_ack"):
            if s.HasField(name):
                getattr(row, name).CopyFrom(getattr(s, name))
        if nacked(s):
            row.last_nack.CopyFrom(s.last_nack)
        if not row.connected:
            row.failed.append(CONNECTED)
        if s.applied_version != s.latest_version or nacked(s) or s.latest_version == 0:
            row.failed.append(CONFIG_CURRENT)
        if not row.self_healthy:
            row.failed.append(SELF_HEALTHY)
        row.healthy = not row.failed
        return row

    def sidecars(self, request: pb.ListSidecarsRequest) -> pb.SidecarList:
        rows = [
            self._row(s)
            for s in self._status.sessions()
            if not request.service_name or s.service_name == request.service_name
        ]
        if not request.include_disconnected:
            rows = [r for r in rows if r.connected]
        out = pb.SidecarList(total=len(rows), read_revision=self._status.revision)
        out.sidecars.extend(rows[request.offset : request.offset + request.limit])
        out.checked_at.CopyFrom(_ts(self._clock.now()))
        return out

    def health(self, principal: Principal, service_id: str, service_name: str) -> pb.SidecarHealth:
        name, sessions = self._scope(principal, service_id, service_name)
        if not sessions:
            what = f"instance {service_id}" if service_id else f"service {name}"
            raise SidecarResourceNotFound(
                f"no sidecar of {what} has ever connected",
                details={"serviceId": service_id} if service_id else {"serviceName": name},
            )
        rows = [self._row(s) for s in sessions]
        out = pb.SidecarHealth(
            service_id=service_id,
            service_name=name,
            healthy=all(r.healthy for r in rows),
            revision=self._status.revision,
        )
        out.failed.extend(sorted({c for r in rows for c in r.failed}))
        out.sidecars.extend(rows)
        out.checked_at.CopyFrom(_ts(self._clock.now()))
        return out

    def _scope(
        self, principal: Principal, service_id: str, service_name: str
    ) -> tuple[str, list[spb.SidecarSession]]:
        """(service name, its session records) of what the request asks about."""
        if service_id:
            instance = self._instances.get(service_id)
            if instance is None:
                raise InstanceNotRegistered(
                    f"no instance {service_id} is registered", details={"serviceId": service_id}
                )
            principal.require_acts_as(instance.service_name)
            found = self._status.session(service_id)
            return instance.service_name, [found] if found is not None else []
        name = self._service(principal, service_name)
        return name, [s for s in self._status.sessions() if s.service_name == name]

    @staticmethod
    def _service(principal: Principal, service_name: str) -> str:
        return addressed_service(
            principal, service_name, InvalidSidecarConfiguration, "the sidecars"
        )

    # -- metrics -----------------------------------------------------------------------------

    async def metrics(
        self, principal: Principal, request: pb.GetSidecarMetricsRequest
    ) -> pb.SidecarMetrics:
        name, sessions = self._scope(principal, request.service_id, request.service_name)
        sids = [request.service_id] if request.service_id else [s.service_id for s in sessions]
        now = self._clock.now()
        time_range = request.time_range or pb.TIME_RANGE_15M  # UNSPECIFIED sent explicitly
        start_minute = usage.window_start_of(now, time_range) // 60
        records: dict[tuple[str, int, str], spb.UsageMinute] = {}
        revision = 0
        for sid in sids:
            start = keys.usage_minute_prefix(name, sid, start_minute)
            found = await self._store.range(keys.usage_prefix(name, sid), start=start)
            revision = max(revision, found.revision)
            for kv in found.kvs:
                record = read_usage(kv.key, kv.value)
                if record is not None:
                    records[(sid, record.minute, record.stream)] = record
        local = self._local()
        for sid in sids:
            session = local.get(sid)
            if session is None:
                continue
            for record in session.unflushed():  # not written yet: only this replica has it
                records.setdefault((sid, record.minute, record.stream), record)
        out = usage.window(records.values(), now=now, time_range=time_range, kinds=request.metrics)
        out.service_id = request.service_id
        out.service_name = name
        out.revision = revision
        return out
