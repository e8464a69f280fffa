"""One connected sidecar on this replica: what it was sent, what it applied, what it reported.

The distributor offers snapshots (``offer``); only the newest unsent one is kept, so a slow
sidecar is never sent a backlog of outdated configurations. ``receive`` applies the sidecar's
messages: an ACK names a sent snapshot by nonce and version (it becomes the applied one), a
NACK keeps the last applied one and records the error, a report feeds the minute's usage and the
sidecar's own health. Every change of what other replicas must see goes to the status writer as
a session record.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import OrderedDict
from dataclasses import dataclass

from google.protobuf import timestamp_pb2

from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2 as pb
from lucid_cp.api.lucid.sidecar.v1 import storage_pb2 as spb
from lucid_cp.clock import Clock
from lucid_cp.errors import FieldViolation, InvalidArgument
from lucid_cp.mesh.selectors import Workload
from lucid_cp.sidecar import usage
from lucid_cp.sidecar.writer import StatusWriter

SENT_KEPT = 16  # snapshots remembered per sidecar, for the nonces of late ACKs
DEFAULT_REPORT_INTERVAL = 30


class InvalidConnectMessage(InvalidArgument):
    """A message on the Connect stream breaks the protocol (ends the stream)."""


@dataclass(frozen=True, slots=True)
class Sent:
    version: int
    digest: bytes
    observed_at: float  # when this replica observed the change that produced it
    sent_at: float


def _ts(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


class Session:
    def __init__(
        self,
        service_id: str,
        service_name: str,
        workload: Workload,
        build: str,
        *,
        clock: Clock,
        writer: StatusWriter,
        previous: spb.SidecarSession | None,
    ) -> None:
        self.service_id = service_id
        self.service_name = service_name
        self.workload = workload
        self.destinations: frozenset[str] = frozenset()
        self._clock = clock
        self._writer = writer
        self._sent: OrderedDict[str, Sent] = OrderedDict()
        self._outbox: pb.ConnectResponse | None = None
        self._wake = asyncio.Event()
        self._closed = False
        self.error: Exception | None = None
        self.minutes: dict[int, spb.UsageMinute] = {}
        self._written_through = 0  # the newest minute handed to the writer
        self.stream = secrets.token_hex(8)  # names this stream's usage records and nonces
        self._nonces = 0
        self.latest_digest = b""
        self._sent_version = 0  # the version of the last snapshot sent
        self._pending_meta: tuple[bytes, float] = (b"", 0.0)
        now = clock.now()
        record = spb.SidecarSession(
            service_id=service_id,
            service_name=service_name,
            replica=writer.replica,
            connected=True,
            build=build,
            report_interval=DEFAULT_REPORT_INTERVAL,
        )
        record.connected_since.CopyFrom(_ts(now))
        if previous is not None:  # what it applied before survives a reconnection
            record.applied_version = previous.applied_version
            record.applied_digest = previous.applied_digest
            record.last_ack.CopyFrom(previous.last_ack)
            record.ack_latency_ms = previous.ack_latency_ms
            record.latest_version = previous.applied_version
            if previous.HasField("last_report"):
                record.last_report.CopyFrom(previous.last_report)
                record.self_healthy = previous.self_healthy
                record.self_reason = previous.self_reason
            self.latest_digest = previous.applied_digest
            self._sent_version = previous.applied_version
        self.record = record
        self._save()

    # -- the distributor's side ----------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def applied_digest(self) -> bytes:
        return self.record.applied_digest

    def has(self, digest: bytes) -> bool:
        """Whether the sidecar has, or is about to get, this content: the snapshot queued, else
        the last one sent (or, on a reconnection, the one it applied). Nothing is sent then,
        whatever its version. Content equal to what was last sent, while another snapshot is
        still queued (a change undone before the sidecar read it), drops the queued one."""
        if self._outbox is not None:
            if digest == self._pending_meta[0]:
                return True
            if digest == self.latest_digest:
                self._outbox = None
                self.record.latest_version = self._sent_version
                self._save()
                return True
            return False
        return digest == self.latest_digest

    def offer(self, snapshot: pb.ConnectResponse, digest: bytes, observed_at: float) -> None:
        """Queues ``snapshot`` (version set) for sending; it replaces an unsent older one. From
        now on the record says the sidecar's latest version is this one (it is stale until it
        ACKs it), whether or not it has read it yet."""
        if self._closed:
            return
        self._outbox = snapshot
        self._pending_meta = (digest, observed_at)
        self.record.latest_version = snapshot.version
        self.record.latest_sent_at.CopyFrom(_ts(self._clock.now()))
        self._save()
        self._wake.set()

    def close(self, error: Exception | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        self.error = error
        self._wake.set()

    def disconnected(self, *, replaced: bool) -> None:
        """Records the end of the stream: its unwritten minutes are written now, and its session
        record says disconnected (unless a newer stream of the sidecar took over: that one's
        record stands)."""
        self._flush_minutes(final=True)
        if replaced:
            return
        self.record.connected = False
        self.record.disconnected_at.CopyFrom(_ts(self._clock.now()))
        self._save()

    # -- the stream's side ---------------------------------------------------------------------

    async def next_snapshot(self) -> pb.ConnectResponse | None:
        """The next snapshot to send, None once the session is closed."""
        while True:
            if self._closed:
                return None
            snapshot = self._outbox
            if snapshot is not None:
                self._outbox = None
                digest, observed_at = self._pending_meta
                now = self._clock.now()
                self._nonces += 1
                snapshot.nonce = f"{self.stream}-{self._nonces}"  # unique on this stream
                snapshot.generated_at.CopyFrom(_ts(now))
                self._sent[snapshot.nonce] = Sent(snapshot.version, digest, observed_at, now)
                while len(self._sent) > SENT_KEPT:
                    self._sent.popitem(last=False)
                self.latest_digest = digest
                self._sent_version = snapshot.version
                return snapshot
            self._wake.clear()
            await self._wake.wait()

    def receive(self, message: pb.ConnectRequest) -> None:
        if self._closed:
            return  # replaced or ended: a late message must not overwrite the newer record
        kind = message.WhichOneof("kind")
        if kind == "ack":
            self._ack(message.ack)
        elif kind == "nack":
            self._nack(message.nack)
        elif kind == "report":
            self._report(message.report)
        elif kind == "hello":
            raise InvalidConnectMessage(
                "hello: only the first message of a Connect stream may be a hello",
                [FieldViolation("hello", "only the first message of the stream may be a hello")],
            )
        else:
            raise InvalidConnectMessage(
                "kind: a ConnectRequest carries one of hello, ack, nack, report",
                [FieldViolation("kind", "one of hello, ack, nack, report is required")],
            )

    def _sent_for(self, field: str, version: int, nonce: str) -> Sent | None:
        sent = self._sent.get(nonce)
        if sent is None:
            return None  # a nonce older than the ones kept: a late receipt, ignored (as xDS)
        if sent.version != version:
            raise InvalidConnectMessage(
                f"{field}.version: snapshot {nonce} has version {sent.version}, not {version}",
                [FieldViolation(f"{field}.version", f"must be {sent.version} for this nonce")],
            )
        return sent

    def _ack(self, ack: pb.Ack) -> None:
        sent = self._sent_for("ack", ack.version, ack.nonce)
        if sent is None or ack.version < self.record.applied_version:
            return
        now = self._clock.now()
        r = self.record
        r.applied_version = ack.version
        r.applied_digest = sent.digest
        r.last_ack.CopyFrom(_ts(now))
        r.ack_latency_ms = max(0.0, (now - sent.observed_at) * 1e3)
        r.ClearField("last_nack")
        self._save()

    def _nack(self, nack: pb.Nack) -> None:
        if self._sent_for("nack", nack.version, nack.nonce) is None:
            return
        self.record.last_nack.CopyFrom(
            pb.NackStatus(version=nack.version, error=nack.error, at=_ts(self._clock.now()))
        )
        self._save()

    def _report(self, report: pb.MetricsReport) -> None:
        violations = usage.report_errors(report, "report.")
        if violations:
            raise InvalidConnectMessage(
                "; ".join(f"{v.field}: {v.description}" for v in violations), violations
            )
        r = self.record
        changed = r.self_healthy != report.healthy or r.self_reason != report.reason
        first_this_minute = usage.minute_of(self._clock.now()) != usage.minute_of(
            r.last_report.ToNanoseconds() / 1e9
        )
        r.last_report.CopyFrom(_ts(self._clock.now()))
        r.self_healthy = report.healthy
        r.self_reason = report.reason
        end = report.window_end.ToNanoseconds() / 1e9
        now_minute = usage.minute_of(self._clock.now())
        # The sidecar's clock says which minute, within reason: at most the current minute and
        # at least the previous one (a skewed or hostile clock cannot scatter records over the
        # day or force a write per report). A late report of a minute already written counts
        # in the first unwritten one: a minute's record is written once per stream.
        minute = min(max(usage.minute_of(end), now_minute - 1), now_minute)
        minute = max(minute, self._written_through + 1)
        record = self.minutes.get(minute)
        if record is None:
            record = self.minutes[minute] = spb.UsageMinute(
                service_id=self.service_id,
                service_name=self.service_name,
                minute=minute,
                stream=self.stream,
            )
        usage.add_report(record, report)
        flushed = self._flush_minutes(final=False)
        if changed or flushed or first_this_minute:
            self._save()

    def set_report_interval(self, seconds: int) -> None:
        if seconds != self.record.report_interval:
            self.record.report_interval = seconds
            self._save()

    def tick(self) -> None:
        """Periodic: hands completed minutes to the writer (with the session record)."""
        if self._flush_minutes(final=False):
            self._save()

    def _flush_minutes(self, *, final: bool) -> bool:
        """Writes the minutes that are over (every one when ``final``); True if any."""
        current = usage.minute_of(self._clock.now())
        done = [m for m in self.minutes if final or m < current]
        for minute in sorted(done):
            self._writer.usage(self.minutes.pop(minute))
            self._written_through = max(self._written_through, minute)
        return bool(done)

    def unflushed(self) -> list[spb.UsageMinute]:
        """The minutes not handed to the writer yet (this replica's view of the current one)."""
        return list(self.minutes.values())

    def save(self) -> None:
        """Writes the session record again (it was overwritten by an older stream's end)."""
        if not self._closed:
            self._save()

    def _save(self) -> None:
        out = spb.SidecarSession()
        out.CopyFrom(self.record)
        self._writer.session(out)
