"""What the sidecar benchmarks share: ``SidecarBench`` (one run: secret and tokens, a real
``lucid-cp serve`` child, the baseline push server, the sidecar client pools, results), seeding
through discovery, and the fan-out measurement used by both the control plane and the baseline.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as dpb
from lucid_cp.api.lucid.discovery.v1 import discovery_pb2_grpc
from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2 as pb
from lucid_cp.auth.tokens import Role, mint_token
from lucid_cp.clock import SystemClock
from scripts.bench.children import CP_READY, Child, Children, ask, serve_argv
from scripts.bench.common import (
    CHANNEL_OPTIONS,
    LOOPBACK,
    cpu_seconds,
    latency_summary,
    median,
    monotonic_ns,
    rss_kib,
)
from scripts.bench.discovery_common import registration
from scripts.bench.load import run_load

_SERVICE = pb.DESCRIPTOR.services_by_name["SidecarService"]
CONNECT_METHOD = f"/{_SERVICE.full_name}/{_SERVICE.methods_by_name['Connect'].name}"
PUSH_METHOD = "/bench.Push/Push"  # the baseline server's "write": push to every stream
RPC_TIMEOUT = 30.0
ROLE_ARGV = [sys.executable, "-m", "scripts.bench.sidecar", "--role"]
# After the last stream of a write has its snapshot: time for the ACKs to be processed and the
# batched status writes (every 50 ms) to land, so the CPU window holds the whole push.
SETTLE_S = 0.3
GAP_S = 0.2  # quiet time between two writes


@dataclass(frozen=True)
class Stream:
    """One sidecar stream a client process opens: its instance, group (service) and token."""

    service_id: str
    group: str
    token: str


@dataclass
class Connected:
    """Client processes holding a set of streams, and what opening them cost the server."""

    clients: list[Child]
    open_s: float
    memory: dict[str, float]  # rss_before_kib, rss_after_kib, kib_per_stream
    idle: float  # the server's CPU seconds per second with every stream open, nothing pushed


class SidecarBench:
    def __init__(
        self,
        workdir: Path,
        children: Children,
        clients: int,
        channels: int,
        profile_dir: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.profile_dir = profile_dir  # run control planes under cProfile, stats here
        self.children = children
        self.clients = clients  # client processes for N > 1
        self.channels = channels  # channels per client process; 0: one per stream
        # Printable: `lucid-cp serve` strips whitespace around the file's content.
        self.secret = secrets.token_hex(32).encode()
        self.secret_file = workdir / "jwt.secret"
        self.secret_file.write_bytes(self.secret)
        self.secret_file.chmod(0o600)
        self.md = (("authorization", f"Bearer {self.token('bench-admin', Role.ADMIN)}"),)
        self.results: dict[str, Any] = {}
        self.problems: list[str] = []  # control-plane errors found in its log

    def token(self, subject: str, role: Role = Role.SERVICE) -> str:
        return mint_token(self.secret, subject, role, SystemClock(), ttl=3600)

    # -- children ----------------------------------------------------------------------------

    def start_cp(self, name: str) -> Child:
        """A real ``lucid-cp serve``: memory store, gRPC only, rate limits and active health
        checks off (the instances' endpoints are unreachable addresses)."""
        profile = self.profile_dir / f"{name}.prof" if self.profile_dir is not None else None
        argv = serve_argv(self.workdir / name, self.secret_file, store="memory://", profile=profile)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LUCID_")}
        return self.children.start_server(name, argv, CP_READY, env=env)

    def start_push_server(self) -> Child:
        return self.children.start("push-server", [*ROLE_ARGV, "pushserver"])

    def start_clients(self, name: str, server: Child, streams: Sequence[Stream]) -> list[Child]:
        """Client processes holding ``streams`` (split evenly); each is ready once all of its
        streams have their first snapshot."""
        processes = 1 if len(streams) < 2 else max(1, min(self.clients, len(streams)))
        out: list[Child] = []
        try:
            for number in range(processes):
                out.append(
                    self._start_client(f"{name}-{number}", server, streams[number::processes])
                )
        except BaseException:
            for child in out:
                self.children.stop(child)
            raise
        return out

    def _start_client(self, name: str, server: Child, mine: Sequence[Stream]) -> Child:
        spec = self.workdir / f"{name}.json"
        spec.write_text(json.dumps([s.__dict__ for s in mine]))
        argv = [
            *ROLE_ARGV,
            "sidecars",
            "--target",
            self.target(server),
            "--streams-file",
            str(spec),
            "--channels",
            str(self.channels),
        ]
        child = self.children.start(name, argv, ready_timeout=300)
        if child.info.get("failures"):
            self.children.stop(child)
            raise RuntimeError(f"{child.name}: streams failed: {child.info['failures']}")
        return child

    async def connect(self, name: str, server: Child, streams: Sequence[Stream]) -> Connected:
        """Opens ``streams`` on ``server`` (client processes, see ``start_clients``) and measures
        what holding them costs the server: RSS per stream (1 s after the last opened) and its
        idle CPU rate with all of them open."""
        rss_before = rss_kib(server.pid)
        started = time.monotonic()
        clients = self.start_clients(name, server, streams)
        open_s = time.monotonic() - started
        await asyncio.sleep(1.0)
        rss_after = rss_kib(server.pid)
        before = cpu_seconds(server.pid)
        await asyncio.sleep(1.0)
        idle = cpu_seconds(server.pid) - before
        memory = {
            "rss_before_kib": rss_before,
            "rss_after_kib": rss_after,
            "kib_per_stream": (rss_after - rss_before) / len(streams),
        }
        return Connected(clients, open_s, memory, idle)

    def stop(self, held: Connected | None) -> None:
        for child in held.clients if held is not None else ():
            self.children.stop(child)

    @staticmethod
    def target(child: Child) -> str:
        return f"{LOOPBACK}:{child.info['port']}"

    def channel(self, child: Child) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.target(child), options=CHANNEL_OPTIONS)

    @staticmethod
    async def ask(child: Child, line: str) -> dict[str, Any]:
        """Sends a command to a client process and returns its ``DONE {json}`` answer."""
        return await ask(child, line)

    async def arrivals(self, clients: Sequence[Child], name: str) -> list[dict[str, Any]]:
        """Every stream's record so far: group and [[arrival_ns, version, bytes], ...]."""
        out: list[dict[str, Any]] = []
        for number, child in enumerate(clients):
            path = self.workdir / f"{name}-dump-{number}.json"
            await self.ask(child, f"dump {path}")
            out += json.loads(path.read_text())["streams"]
        return out

    def check_log(self, child: Child) -> None:
        """Records errors and tracebacks the control plane logged."""
        text = child.log_path.read_text(errors="replace")
        lines = [
            line
            for line in text.splitlines()
            if "Traceback" in line or " ERROR " in line or "ERROR:" in line or "Exception" in line
        ]
        if lines:
            self.problems.append(f"{child.name}: {len(lines)} error line(s), first: {lines[0]}")

    # -- seeding -----------------------------------------------------------------------------

    async def register(
        self,
        stub: discovery_pb2_grpc.DiscoveryServiceAsyncStub,
        service: str,
        count: int,
        *,
        offset: int,
        healthy: bool = True,
    ) -> list[str]:
        """Registers ``count`` instances of ``service`` (and marks them healthy); their ids in
        registration order."""
        ids: dict[int, str] = {}

        async def op(i: int) -> None:
            request = registration(service, i)
            await stub.Register(request, metadata=self.md, timeout=RPC_TIMEOUT)
            if healthy:
                await self.set_health(stub, request.registration.service_id, healthy=True)
            ids[i] = request.registration.service_id

        result = await run_load(count, min(16, count), op, budget_s=120, offset=offset)
        if result.errors:
            raise RuntimeError(f"registering {service} failed: {result.errors[:3]}")
        return [ids[i] for i in sorted(ids)]

    async def set_health(
        self, stub: discovery_pb2_grpc.DiscoveryServiceAsyncStub, service_id: str, *, healthy: bool
    ) -> int:
        state = dpb.HEALTH_STATE_HEALTHY if healthy else dpb.HEALTH_STATE_UNHEALTHY
        response = await stub.UpdateHealth(
            dpb.UpdateHealthRequest(service_id=service_id, update=dpb.HealthUpdate(status=state)),
            metadata=self.md,
            timeout=RPC_TIMEOUT,
        )
        return int(response.revision)


# -- the fan-out measurement ---------------------------------------------------------------------


async def measure_writes(
    bench: SidecarBench,
    server: Child,
    clients: Sequence[Child],
    write: Callable[[int], Awaitable[int]],
    writes: int,
    *,
    group: str = "*",
) -> list[dict[str, Any]]:
    """``writes`` sequential writes; after each, waits until every stream of ``group`` has a
    snapshot of version >= the write's revision. Returns per write: t0 (CLOCK_MONOTONIC just
    before the write call), revision, write RPC time, streams still missing, server and client
    CPU over [t0, all arrived + SETTLE_S]."""
    out: list[dict[str, Any]] = []
    for w in range(writes):
        server_cpu = cpu_seconds(server.pid)
        client_cpu = sum(cpu_seconds(c.pid) for c in clients)
        t0 = monotonic_ns()
        revision = await write(w)
        acked = monotonic_ns()
        answers = await asyncio.gather(
            *(bench.ask(c, f"wait {revision} 30 {group}") for c in clients)
        )
        await asyncio.sleep(SETTLE_S)
        window = (monotonic_ns() - t0) / 1e9
        out.append(
            {
                "t0": t0,
                "revision": revision,
                "write_ms": (acked - t0) / 1e6,
                "missing": sum(a["missing"] for a in answers),
                "server_cpu_s": cpu_seconds(server.pid) - server_cpu,
                "client_cpu_s": sum(cpu_seconds(c.pid) for c in clients) - client_cpu,
                "window_s": window,
            }
        )
        await asyncio.sleep(GAP_S)
    return out


def latencies(
    streams: list[dict[str, Any]], rounds: list[dict[str, Any]], group: str = "*"
) -> dict[str, Any]:
    """Per write, over the streams of ``group``: time from t0 to the first snapshot of version >=
    the write's revision; and every stream's snapshot count per write window (t0 of a write to
    t0 of the next)."""
    per_write: list[list[float]] = []
    counts: list[list[int]] = []  # per stream, per write window
    stray = 0  # snapshots after the first one but before the first write
    for _ in rounds:
        per_write.append([])
    for stream in streams:
        got = stream["arrivals"][1:]  # after the first (connect) snapshot
        mine = [0] * len(rounds)
        for arrived, _version, _size in got:
            w = next((w for w in range(len(rounds) - 1, -1, -1) if arrived >= rounds[w]["t0"]), -1)
            if w < 0:
                stray += 1
            else:
                mine[w] += 1
        counts.append(mine)
        if group != "*" and stream["group"] != group:
            continue
        for w, r in enumerate(rounds):
            first = next((a for a, v, _ in got if v >= r["revision"] and a >= r["t0"]), None)
            if first is not None:
                per_write[w].append((first - r["t0"]) / 1e9)
    summaries: list[dict[str, Any]] = [
        {**latency_summary(x), "min_ms": min(x, default=math.nan) * 1e3} for x in per_write
    ]
    pooled = latency_summary([x for xs in per_write for x in xs])
    return {
        **pooled,
        "per_write": summaries,
        "median_p99_ms": median([s["p99_ms"] for s in summaries]),
        "median_all_ms": median([s["max_ms"] for s in summaries]),
        "median_first_ms": median([s["min_ms"] for s in summaries]),
        "worst_p99_ms": max((float(s["p99_ms"]) for s in summaries), default=math.nan),
        "counts": counts,
        "stray": stray,
    }


def snapshot_bytes(streams: list[dict[str, Any]]) -> int:
    """Size of the last snapshot received (the largest the run pushed)."""
    sizes = [s["arrivals"][-1][2] for s in streams if s["arrivals"]]
    return max(sizes, default=0)
