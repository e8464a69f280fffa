#!/usr/bin/env python3
"""Discovery benchmarks, side by side with their baselines, in one run.

    python scripts/bench_discovery.py            # full run (~5-10 min on 2 cores)
    python scripts/bench_discovery.py --quick    # smaller run (~1-2 min)
    python scripts/bench_discovery.py --json out.json   # also dump every raw number

(a) Resolve throughput and latency vs a bare grpc.aio echo server (same process model, same
    server options), both driven by h2load with the same request count and concurrency.
(b) Register RPC on a control plane backed by a real etcd vs raw aetcd lease grant + put with
    that lease, at equal concurrency.
(c) Write-to-watcher latency (UpdateHealth -> UPDATED event) with 1 and many Watch streams;
    the watch streams live in their own process.
(d) Resolve latency and control-plane RSS at 1k and 100k registered instances.

Every server (echo, control plane, etcd) and the watcher pool run as child processes of this
script; each Python child exits when its stdin closes, and all are stopped on the way out, also
on errors and SIGTERM. Only loopback is used. Every loop is bounded in count and in time.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_common import (
    CHANNEL_OPTIONS,
    LOOPBACK,
    Child,
    Children,
    LoadResult,
    Row,
    announce_ready,
    cpu_seconds,
    fmt,
    fmt_ratio,
    grpc_frame,
    latency_summary,
    markdown_table,
    median,
    median_run,
    monotonic_ns,
    rss_kib,
    run_h2load,
    run_load,
    serve_echo,
    wait_for_stdin_eof,
)

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.api.lucid.discovery.v1 import discovery_pb2_grpc
from lucid_cp.auth.tokens import Role, mint_token
from lucid_cp.clock import SystemClock
from lucid_cp.config import Settings

_SERVICE = pb.DESCRIPTOR.services_by_name["DiscoveryService"]
RESOLVE_METHOD = f"/{_SERVICE.full_name}/{_SERVICE.methods_by_name['Resolve'].name}"
WATCH_METHOD = f"/{_SERVICE.full_name}/{_SERVICE.methods_by_name['Watch'].name}"
ECHO_METHOD = "/bench.Echo/Echo"
SECRET_ENV = "LUCID_BENCH_JWT_SECRET"
TOKEN_ENV = "LUCID_BENCH_TOKEN"
RPC_TIMEOUT = 15.0


@dataclass(frozen=True)
class Plan:
    """Sizes of one run (full or --quick)."""

    h2load_requests: int
    h2load_warmup: int
    h2load_clients: int
    h2load_streams: int
    h2load_repeats: int
    resolve_instances: int
    register_n: int
    register_warmup: int
    register_concurrency: int
    register_rounds: int
    watch_counts: tuple[int, ...]
    watch_writes: dict[int, int]
    watch_interval_s: dict[int, float]
    watch_channels: int
    watch_processes: int
    scale_sizes: tuple[int, ...]
    scale_register_concurrency: int
    scale_register_budget_s: float
    resolve_calls: int
    resolve_batches: int
    resolve_warmup: int


FULL = Plan(
    h2load_requests=30_000,
    h2load_warmup=3_000,
    h2load_clients=8,
    h2load_streams=8,
    h2load_repeats=3,
    resolve_instances=10,
    register_n=3_000,
    register_warmup=100,
    register_concurrency=32,
    register_rounds=3,
    watch_counts=(1, 1_000),
    watch_writes={1: 200, 1_000: 40},
    watch_interval_s={1: 0.02, 1_000: 0.25},
    watch_channels=16,
    watch_processes=1,
    scale_sizes=(1_000, 100_000),
    scale_register_concurrency=64,
    scale_register_budget_s=300.0,
    resolve_calls=1_000,
    resolve_batches=5,
    resolve_warmup=200,
)
QUICK = Plan(
    h2load_requests=5_000,
    h2load_warmup=1_000,
    h2load_clients=8,
    h2load_streams=8,
    h2load_repeats=1,
    resolve_instances=10,
    register_n=500,
    register_warmup=50,
    register_concurrency=32,
    register_rounds=1,
    watch_counts=(1, 100),
    watch_writes={1: 50, 100: 20},
    watch_interval_s={1: 0.02, 100: 0.1},
    watch_channels=8,
    watch_processes=1,
    scale_sizes=(1_000, 10_000),
    scale_register_concurrency=64,
    scale_register_budget_s=60.0,
    resolve_calls=500,
    resolve_batches=3,
    resolve_warmup=100,
)


def server_options() -> list[tuple[str, Any]]:
    """The options start_control_plane gives its server, so the echo server matches them."""
    limit = Settings().max_message_bytes
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.so_reuseport", 0),
    ]


# ==========================================================================================
# Child roles (run as `bench_discovery.py --role ...`)
# ==========================================================================================


async def role_control_plane(store_url: str, profile: str | None, health_checks: bool) -> None:
    from lucid_cp.app import start_control_plane

    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    settings = Settings(
        store_url=store_url,
        grpc_addr=f"{LOOPBACK}:0",
        jwt_secret=bytes.fromhex(os.environ[SECRET_ENV]),
        rate_limits_enabled=False,
        log_level="WARNING",
        # The benchmark's instances point at addresses nothing listens on; active checks would
        # mark them unhealthy and add probe load unrelated to what is measured (--health-checks).
        health_checks_enabled=health_checks,
    )
    plane = await start_control_plane(settings)
    from lucid_cp.rpc.runtime import tune_gc

    tune_gc()  # as `lucid-cp serve` does
    announce_ready(port=plane.grpc_port, pid=os.getpid())
    try:
        await wait_for_stdin_eof()
    finally:
        await plane.stop(0)
        if profiler is not None and profile:
            profiler.disable()
            profiler.dump_stats(profile)


async def role_watchers(target: str, count: int, channels: int, service: str, out: str) -> None:
    """Opens ``count`` Watch streams of ``service``; after each stream's snapshot, records the
    arrival time (CLOCK_MONOTONIC) and raw bytes of every message. On "collect K SECONDS" from
    stdin, waits until every stream has K events (or the time is up), decodes them, writes
    [[seq, arrival_ns], ...] (seq = the write's health.response_time) to ``out`` and exits."""
    md = (("authorization", f"Bearer {os.environ[TOKEN_ENV]}"),)
    request = pb.WatchRequest(service_name=service).SerializeToString()
    chans = [grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(channels)]
    arrivals: list[list[tuple[int, bytes]]] = [[] for _ in range(count)]
    snapshots = [0]
    all_ready = asyncio.Event()
    failures: list[str] = []

    async def watch(i: int) -> None:
        stream = chans[i % channels].unary_stream(WATCH_METHOD)(request, metadata=md)
        mine = arrivals[i]
        first = True
        try:
            async for raw in stream:
                if first:
                    first = False
                    if pb.WatchResponse.FromString(raw).type != pb.WATCH_EVENT_TYPE_SNAPSHOT:
                        failures.append(f"stream {i}: first message is not a snapshot")
                    snapshots[0] += 1
                    if snapshots[0] == count:
                        all_ready.set()
                    continue
                mine.append((monotonic_ns(), raw))
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.CANCELLED:
                failures.append(f"stream {i}: {exc.code().name} {exc.details()}")

    started = time.monotonic()
    tasks = [asyncio.create_task(watch(i)) for i in range(count)]
    try:
        await asyncio.wait_for(all_ready.wait(), 120)
    except TimeoutError:
        failures.append(f"only {snapshots[0]} of {count} streams got their snapshot in 120 s")
    announce_ready(
        pid=os.getpid(), streams=count, open_s=time.monotonic() - started, failures=failures[:5]
    )

    line = await asyncio.to_thread(sys.stdin.readline)
    if not line:  # the orchestrator is gone
        return
    _, expected_text, seconds_text = line.split()
    expected, deadline = int(expected_text), time.monotonic() + float(seconds_text)
    while time.monotonic() < deadline and any(len(a) < expected for a in arrivals):
        await asyncio.sleep(0.05)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for chan in chans:
        await chan.close()

    pairs: list[list[int]] = []
    other = 0
    for stream_arrivals in arrivals:
        for arrived, raw in stream_arrivals:
            event = pb.WatchResponse.FromString(raw)
            if event.type == pb.WATCH_EVENT_TYPE_UPDATED and event.instance.service_name == service:
                pairs.append([int(event.instance.health.response_time), arrived])
            else:
                other += 1
    Path(out).write_text(
        json.dumps({"pairs": pairs, "other_events": other, "failures": failures[:20]})
    )


# ==========================================================================================
# Orchestrator helpers
# ==========================================================================================


def registration(service_name: str, n: int, *, ttl: int = 3600) -> pb.RegisterRequest:
    """A valid registration; every field has the same length whatever n, so responses built
    from it (Resolve) have a constant size."""
    reg = pb.ServiceRegistration(
        service_id=str(uuid.uuid4()),
        service_name=service_name,
        cluster=pb.CLUSTER_API_GATEWAY,
        plane=pb.PLANE_OPS,
        version="1.0.0",
        instance_id=f"inst-{n:06d}",
        ttl=ttl,
    )
    reg.endpoint.host = f"10.{100 + n // 10_000 % 100}.{100 + n // 100 % 100}.{100 + n % 100}"
    reg.endpoint.port = 8080
    reg.endpoint.protocol = pb.PROTOCOL_GRPC
    reg.health_check.endpoint = "/health"
    reg.health_check.interval = 30
    reg.health_check.timeout = 5
    reg.metadata.update({"description": "benchmark instance", "tags": ["bench"]})
    return pb.RegisterRequest(registration=reg)


class Bench:
    def __init__(
        self,
        plan: Plan,
        workdir: Path,
        children: Children,
        profile_dir: Path | None,
        health_checks: bool = False,
    ):
        self.plan = plan
        self.workdir = workdir
        self.children = children
        self.profile_dir = profile_dir
        self.health_checks = health_checks
        self.secret = secrets.token_bytes(32)
        self.token = mint_token(self.secret, "bench-admin", Role.ADMIN, SystemClock(), ttl=3600)
        self.md = (("authorization", f"Bearer {self.token}"),)
        self.results: dict[str, Any] = {}
        self.notes: list[str] = []

    # -- children ----------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        return {**os.environ, SECRET_ENV: self.secret.hex(), TOKEN_ENV: self.token}

    def start_cp(self, name: str, store_url: str) -> Child:
        argv = [sys.executable, __file__, "--role", "cp", "--store", store_url]
        if self.profile_dir is not None:
            argv += ["--profile-out", str(self.profile_dir / f"{name}.prof")]
        if self.health_checks:
            argv.append("--health-checks")
        return self.children.start(name, argv, env=self._env())

    def start_echo(self) -> Child:
        return self.children.start(
            "echo", [sys.executable, __file__, "--role", "echo"], env=self._env()
        )

    @staticmethod
    def target(child: Child) -> str:
        return f"{LOOPBACK}:{child.info['port']}"

    def channel(self, child: Child) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.target(child), options=CHANNEL_OPTIONS)

    async def register_many(
        self,
        stub: discovery_pb2_grpc.DiscoveryServiceStub,
        service_of: Callable[[int], str],
        n: int,
        *,
        offset: int,
        concurrency: int,
        budget_s: float,
    ) -> tuple[LoadResult, list[str]]:
        ids: list[str] = []

        async def op(i: int) -> None:
            request = registration(service_of(i), i)
            await stub.Register(request, metadata=self.md, timeout=RPC_TIMEOUT)
            ids.append(request.registration.service_id)

        result = await run_load(n, concurrency, op, budget_s=budget_s, offset=offset)
        return result, ids

    async def make_healthy(
        self, stub: discovery_pb2_grpc.DiscoveryServiceStub, ids: list[str]
    ) -> None:
        for service_id in ids:
            await stub.UpdateHealth(
                pb.UpdateHealthRequest(
                    service_id=service_id, update=pb.HealthUpdate(status=pb.HEALTH_STATE_HEALTHY)
                ),
                metadata=self.md,
                timeout=RPC_TIMEOUT,
            )

    # ======================================================================================
    # (a) Resolve vs echo, through h2load
    # ======================================================================================

    async def throughput(self) -> None:
        """Rounds of (control plane, then echo), one server alive at a time; the medians over
        rounds are compared, so a noisy neighbour hits both sides alike."""
        rounds: list[dict[str, Any]] = []
        sizes: set[int] = set()
        for number in range(self.plan.h2load_repeats):
            cp_run, sizes, sample = await self._throughput_cp(number)
            echo_run = await self._throughput_echo(number, sample)
            rounds.append({"resolve": cp_run, "echo": echo_run})
        self.results["a_throughput"] = {
            "rounds": rounds,
            "resolve": median_run([r["resolve"] for r in rounds]),
            "echo": median_run([r["echo"] for r in rounds]),
            "resolve_response_bytes": sorted(sizes),
        }

    def _h2load_headers(self) -> list[str]:
        return [
            "content-type: application/grpc",
            "te: trailers",
            f"authorization: Bearer {self.token}",
        ]

    async def _throughput_cp(self, number: int) -> tuple[dict[str, Any], set[int], bytes]:
        p = self.plan
        payload = pb.ResolveRequest(service_name="bench-resolve").SerializeToString()
        cp = self.start_cp(f"cp-throughput-{number}", "memory://")
        try:
            async with self.channel(cp) as chan:
                stub = discovery_pb2_grpc.DiscoveryServiceStub(chan)
                reg, ids = await self.register_many(
                    stub,
                    lambda _i: "bench-resolve",
                    p.resolve_instances,
                    offset=0,
                    concurrency=4,
                    budget_s=60,
                )
                if reg.errors or len(ids) != p.resolve_instances:
                    raise RuntimeError(f"seeding Resolve instances failed: {reg.errors[:3]}")
                await self.make_healthy(stub, ids)
                # The exact bytes h2load will send, through a Python client first: must be OK.
                raw_resolve = chan.unary_unary(RESOLVE_METHOD)
                sizes: set[int] = set()
                sample = b""
                for _ in range(2 * p.resolve_instances):
                    sample = await raw_resolve(payload, metadata=self.md, timeout=RPC_TIMEOUT)
                    decoded = pb.ResolveResponse.FromString(sample)
                    if decoded.service_name != "bench-resolve" or not decoded.host:
                        raise RuntimeError(f"unexpected Resolve answer: {decoded}")
                    sizes.add(len(sample))
                run = await self._h2load_measure(
                    f"resolve-{number}", cp, RESOLVE_METHOD, payload, sizes, _Sampler(stub, self.md)
                )
        finally:
            self.children.stop(cp)
        return run, sizes, sample

    async def _throughput_echo(self, number: int, sample: bytes) -> dict[str, Any]:
        # Echo a payload the size of a Resolve response, so both move the same bytes back.
        echo = self.start_echo()
        try:
            async with self.channel(echo) as chan:
                answer = await chan.unary_unary(ECHO_METHOD)(sample, timeout=RPC_TIMEOUT)
                if answer != sample:
                    raise RuntimeError("the echo server did not echo")
            return await self._h2load_measure(
                f"echo-{number}", echo, ECHO_METHOD, sample, {len(sample)}, None
            )
        finally:
            self.children.stop(echo)

    async def _h2load_measure(
        self,
        name: str,
        child: Child,
        method: str,
        payload: bytes,
        response_sizes: set[int],
        sampler: _Sampler | None,
    ) -> dict[str, Any]:
        """Warm-up, then one measured h2load run (with a gRPC-status sampler when given)."""
        p = self.plan
        headers = self._h2load_headers()
        body = self.workdir / f"{name}.body"
        body.write_bytes(grpc_frame(payload))
        url = f"http://{self.target(child)}{method}"
        await run_h2load(
            url,
            body,
            headers,
            requests=p.h2load_warmup,
            clients=p.h2load_clients,
            streams=p.h2load_streams,
            log_file=None,
            timeout=120,
        )
        cpu_before = cpu_seconds(child.pid)
        sampling = asyncio.create_task(sampler.run()) if sampler is not None else None
        try:
            result = await run_h2load(
                url,
                body,
                headers,
                requests=p.h2load_requests,
                clients=p.h2load_clients,
                streams=p.h2load_streams,
                log_file=self.workdir / f"{name}.h2load.tsv",
                timeout=300,
            )
        finally:
            if sampler is not None and sampling is not None:
                sampler.stop = True
                await sampling
        cpu = cpu_seconds(child.pid) - cpu_before
        summary = result.summary()
        # h2load counts HTTP 200 as success even when grpc-status != 0. A gRPC error has no
        # DATA frame, so the DATA byte count proves every response carried a message.
        low = result.succeeded * (5 + min(response_sizes))
        high = result.succeeded * (5 + max(response_sizes))
        summary["data_bytes_expected"] = [low, high]
        summary["verified"] = (
            result.succeeded == p.h2load_requests
            and result.status_2xx == p.h2load_requests
            and low <= result.data_bytes <= high
            and (sampler is None or (sampler.errors == 0 and sampler.ok > 0))
        )
        if sampler is not None:
            summary["sampler_ok"] = sampler.ok
            summary["sampler_errors"] = sampler.errors
        summary["server_cpu_s"] = cpu
        summary["server_cpu_util"] = cpu / result.seconds if result.seconds else None
        summary["server_cpu_us_per_req"] = (
            cpu / result.succeeded * 1e6 if result.succeeded else None
        )
        summary["loadavg_1m"] = os.getloadavg()[0]
        return summary

    # ======================================================================================
    # (b) Register on etcd vs raw aetcd lease + put
    # ======================================================================================

    async def register_vs_etcd(self) -> None:
        """Rounds of (raw aetcd, Register RPC) against one etcd; the control plane sits idle
        while the raw client runs (its index watches only the discovery prefix)."""
        import aetcd

        sys.path.insert(0, str(ROOT / "tests"))
        from etcd_server import EtcdProcess  # the tests' throwaway-etcd helper

        p = self.plan
        etcd = EtcdProcess(_etcd_dying_with_us(self.workdir), data_dir=self.workdir / "etcd")
        self.children.on_close(etcd.cleanup)
        etcd.start()
        etcd_proc = getattr(etcd, "_proc", None)
        etcd_pid = etcd_proc.pid if etcd_proc is not None else None
        rounds: list[dict[str, Any]] = []
        try:
            value = registration("bench-raw", 0).registration.SerializeToString()
            client = aetcd.Client(
                LOOPBACK, etcd.client_port, timeout=RPC_TIMEOUT, options=dict(CHANNEL_OPTIONS)
            )
            await client.connect()
            cp = self.start_cp("cp-etcd", etcd.url)
            try:
                async with self.channel(cp) as chan:
                    stub = discovery_pb2_grpc.DiscoveryServiceStub(chan)

                    async def raw_op(i: int) -> None:
                        lease = await client.lease(3600)
                        await client.put(f"/bench/raw/{i:08d}".encode(), value, lease=lease.id)

                    async def register_op(i: int) -> None:
                        await stub.Register(
                            registration("bench-register", i), metadata=self.md, timeout=RPC_TIMEOUT
                        )

                    await run_load(
                        p.register_warmup,
                        p.register_concurrency,
                        raw_op,
                        budget_s=60,
                        offset=10_000_000,
                    )
                    await run_load(
                        p.register_warmup,
                        p.register_concurrency,
                        register_op,
                        budget_s=60,
                        offset=10_000_000,
                    )
                    for number in range(p.register_rounds):
                        offset = number * p.register_n
                        raw = await self._measured(raw_op, offset, None, etcd_pid)
                        ours = await self._measured(register_op, offset, cp.pid, etcd_pid)
                        rounds.append({"raw_etcd": raw, "register": ours})
            finally:
                self.children.stop(cp)
                await client.close()
        finally:
            etcd.cleanup()
        self.results["b_register"] = {
            "rounds": rounds,
            "register": median_run([r["register"] for r in rounds], "per_s"),
            "raw_etcd": median_run([r["raw_etcd"] for r in rounds], "per_s"),
            "concurrency": p.register_concurrency,
        }

    async def _measured(
        self,
        op: Callable[[int], Awaitable[Any]],
        offset: int,
        server_pid: int | None,
        etcd_pid: int | None,
    ) -> dict[str, Any]:
        """One load run of register_n ops, with the CPU every party spent on it."""
        p = self.plan
        client_cpu = time.process_time()
        server_cpu = cpu_seconds(server_pid) if server_pid else 0.0
        etcd_cpu = cpu_seconds(etcd_pid) if etcd_pid else 0.0
        result = await run_load(
            p.register_n, p.register_concurrency, op, budget_s=180, offset=offset
        )
        done = max(1, result.done)
        summary = result.summary()
        summary["client_cpu_us_per_op"] = (time.process_time() - client_cpu) / done * 1e6
        if server_pid:
            summary["server_cpu_us_per_op"] = (cpu_seconds(server_pid) - server_cpu) / done * 1e6
            summary["server_cpu_util"] = (cpu_seconds(server_pid) - server_cpu) / result.seconds
        if etcd_pid:
            summary["etcd_cpu_us_per_op"] = (cpu_seconds(etcd_pid) - etcd_cpu) / done * 1e6
        summary["loadavg_1m"] = os.getloadavg()[0]
        return summary

    # ======================================================================================
    # (c) Write-to-watcher latency
    # ======================================================================================

    async def watch_latency(self) -> None:
        p = self.plan
        cp = self.start_cp("cp-watch", "memory://")
        out: dict[str, Any] = {}
        try:
            async with self.channel(cp) as chan:
                stub = discovery_pb2_grpc.DiscoveryServiceStub(chan)
                reg, ids = await self.register_many(
                    stub, lambda _i: "watch-target", 3, offset=0, concurrency=1, budget_s=30
                )
                if len(ids) != 3:
                    raise RuntimeError(f"seeding the watched service failed: {reg.errors[:3]}")
                for watchers in p.watch_counts:
                    out[str(watchers)] = await self._watch_round(cp, stub, ids[0], watchers)
        finally:
            self.children.stop(cp)
        self.results["c_watch"] = out

    async def _watch_round(
        self,
        cp: Child,
        stub: discovery_pb2_grpc.DiscoveryServiceStub,
        service_id: str,
        watchers: int,
    ) -> dict[str, Any]:
        p = self.plan
        writes_n, interval = p.watch_writes[watchers], p.watch_interval_s[watchers]
        processes = max(1, min(p.watch_processes, watchers))
        pools: list[tuple[Child, Path]] = []
        try:
            for number in range(processes):
                count = watchers // processes + (1 if number < watchers % processes else 0)
                out_file = self.workdir / f"watch-{watchers}-{number}.json"
                argv = [
                    sys.executable,
                    __file__,
                    "--role",
                    "watchers",
                    "--target",
                    self.target(cp),
                    "--count",
                    str(count),
                    "--channels",
                    str(max(1, min(count, p.watch_channels // processes))),
                    "--service",
                    "watch-target",
                    "--out",
                    str(out_file),
                ]
                pool = self.children.start(
                    f"watchers-{watchers}-{number}", argv, ready_timeout=180, env=self._env()
                )
                pools.append((pool, out_file))
                if pool.info.get("failures"):
                    raise RuntimeError(f"watch streams failed: {pool.info['failures']}")
            sent: dict[int, int] = {}
            acks: list[float] = []
            cp_cpu = cpu_seconds(cp.pid)
            pool_cpu = sum(cpu_seconds(pool.pid) for pool, _ in pools)
            started = time.monotonic()
            for seq in range(1, writes_n + 1):
                delay = started + seq * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                update = pb.HealthUpdate(status=pb.HEALTH_STATE_HEALTHY, response_time=float(seq))
                t0 = monotonic_ns()
                await stub.UpdateHealth(
                    pb.UpdateHealthRequest(service_id=service_id, update=update),
                    metadata=self.md,
                    timeout=RPC_TIMEOUT,
                )
                acks.append((monotonic_ns() - t0) / 1e9)
                sent[seq] = t0
            await asyncio.sleep(min(1.0, interval * 4))  # the last events are still in flight
            elapsed = time.monotonic() - started
            cp_cpu = cpu_seconds(cp.pid) - cp_cpu
            pool_cpu = sum(cpu_seconds(pool.pid) for pool, _ in pools) - pool_cpu
            for pool, _ in pools:
                pool.send(f"collect {writes_n} 20")
            codes = [await asyncio.to_thread(pool.proc.wait, 60) for pool, _ in pools]
        finally:
            for pool, _ in pools:
                self.children.stop(pool)
        pairs: list[list[int]] = []
        other, failures = 0, []
        for _, out_file in pools:
            data = json.loads(out_file.read_text())
            pairs += data["pairs"]
            other += data["other_events"]
            failures += data["failures"]
        latencies = [(arrived - sent[seq]) / 1e9 for seq, arrived in pairs if seq in sent]
        return {
            "watchers": watchers,
            "writes": writes_n,
            "interval_s": interval,
            "watcher_processes": processes,
            "pairs_expected": watchers * writes_n,
            "pairs_received": len(latencies),
            "other_events": other,
            "failures": failures[:20],
            "open_s": max(pool.info.get("open_s", 0.0) for pool, _ in pools),
            "exit_codes": codes,
            "cp_cpu_util": cp_cpu / elapsed if elapsed else None,
            "watchers_cpu_util": pool_cpu / elapsed if elapsed else None,
            "watchers_cpu_us_per_event": pool_cpu / max(1, len(latencies)) * 1e6,
            "write_ack": latency_summary(acks),
            **latency_summary(latencies),
        }

    # ======================================================================================
    # (d) Resolve latency and RSS at 1k and 100k instances
    # ======================================================================================

    async def scale(self) -> None:
        p = self.plan
        cp = self.start_cp("cp-scale", "memory://")
        out: dict[str, Any] = {"empty_rss_kib": rss_kib(cp.pid), "sizes": {}}
        try:
            # Several channels, as many registering sidecars would have.
            chans = [self.channel(cp) for _ in range(4)]
            stubs = [discovery_pb2_grpc.DiscoveryServiceStub(c) for c in chans]
            try:
                stub = stubs[0]
                target_n = p.resolve_instances
                reg, ids = await self.register_many(
                    stub, lambda _i: "scale-target", target_n, offset=0, concurrency=4, budget_s=60
                )
                if len(ids) != target_n:
                    raise RuntimeError(f"seeding scale-target failed: {reg.errors[:3]}")
                await self.make_healthy(stub, ids)
                registered = target_n
                for size in p.scale_sizes:
                    needed = size - registered
                    result = await self._register_bulk(stubs, registered, needed)
                    registered += result.done
                    check = await stub.Discover(
                        pb.DiscoverRequest(limit=1), metadata=self.md, timeout=60
                    )
                    await asyncio.sleep(1.0)  # let the server settle before reading its RSS
                    rss = rss_kib(cp.pid)
                    resolve = await self._resolve_sequential(stub)
                    out["sizes"][str(size)] = {
                        "registered": registered,
                        "index_total": check.total,
                        "bulk_register": result.summary(),
                        "rss_kib": rss,
                        "resolve": resolve,
                    }
            finally:
                for c in chans:
                    await c.close()
        finally:
            self.children.stop(cp)
        self.results["d_scale"] = out

    async def _register_bulk(
        self, stubs: list[discovery_pb2_grpc.DiscoveryServiceStub], offset: int, n: int
    ) -> LoadResult:
        p = self.plan

        async def op(i: int) -> None:
            # 100 instances per bulk service; none of them is "scale-target".
            await stubs[i % len(stubs)].Register(
                registration(f"bulk-{i // 100:05d}", i), metadata=self.md, timeout=RPC_TIMEOUT
            )

        return await run_load(
            n, p.scale_register_concurrency, op, budget_s=p.scale_register_budget_s, offset=offset
        )

    async def _resolve_sequential(
        self, stub: discovery_pb2_grpc.DiscoveryServiceStub
    ) -> dict[str, Any]:
        """Sequential Resolve calls in batches; p50/p99 are the medians over batches (a burst
        from a noisy neighbour spoils one batch, not the figure), pooled figures are kept too."""
        p = self.plan
        request = pb.ResolveRequest(service_name="scale-target")

        async def op(_i: int) -> None:
            response = await stub.Resolve(request, metadata=self.md, timeout=RPC_TIMEOUT)
            if response.service_name != "scale-target":
                raise RuntimeError(f"unexpected Resolve answer: {response}")

        await run_load(p.resolve_warmup, 1, op, budget_s=30)
        batches = [
            await run_load(p.resolve_calls, 1, op, budget_s=60) for _ in range(p.resolve_batches)
        ]
        pooled = [x for b in batches for x in b.latencies]
        per_batch = [b.summary() for b in batches]
        return {
            "p50_ms": median([b["p50_ms"] for b in per_batch]),
            "p99_ms": median([b["p99_ms"] for b in per_batch]),
            "batches": per_batch,
            "pooled": latency_summary(pooled),
            "errors": sum(len(b.errors) for b in batches),
        }


def _etcd_dying_with_us(workdir: Path) -> str | None:
    """An etcd launcher that dies with this process even if we are SIGKILLed (EtcdProcess puts
    etcd in its own session, out of reach of our process group): a shell script exec-ing etcd
    under ``setpriv --pdeathsig KILL``. None (EtcdProcess's own lookup) without setpriv."""
    from etcd_server import find_etcd_binary

    binary, setpriv = find_etcd_binary(), shutil.which("setpriv")
    if binary is None or setpriv is None:
        return None
    launcher = workdir / "etcd-pdeathsig.sh"
    launcher.write_text(
        f'#!/bin/sh\nexec {shlex.quote(setpriv)} --pdeathsig KILL -- {shlex.quote(binary)} "$@"\n'
    )
    launcher.chmod(0o755)
    return str(launcher)


class _Sampler:
    """Calls Resolve through a real gRPC client ~20 times a second while h2load runs, and
    counts non-OK statuses (h2load itself only sees HTTP 200)."""

    def __init__(self, stub: discovery_pb2_grpc.DiscoveryServiceStub, md: Any) -> None:
        self.stub = stub
        self.md = md
        self.ok = 0
        self.errors = 0
        self.stop = False

    async def run(self) -> None:
        request = pb.ResolveRequest(service_name="bench-resolve")
        for _ in range(20 * 600):  # bounded: at most ~10 minutes
            if self.stop:
                return
            try:
                response = await self.stub.Resolve(request, metadata=self.md, timeout=RPC_TIMEOUT)
                if response.host and response.service_name == "bench-resolve":
                    self.ok += 1
                else:
                    self.errors += 1
            except grpc.aio.AioRpcError:
                self.errors += 1
            await asyncio.sleep(0.05)


# ==========================================================================================
# Report
# ==========================================================================================


def build_report(
    results: dict[str, Any], plan: Plan, quick: bool, health_checks: bool
) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    notes: list[str] = []

    def met(ok: bool | None) -> str:
        return "n/a" if ok is None else ("yes" if ok else "**no**")

    a = results.get("a_throughput")
    if a:
        ours, base = a["resolve"], a["echo"]
        text, ratio = fmt_ratio(ours["req_per_s"], base["req_per_s"])
        verified = all(r[k]["verified"] for r in a["rounds"] for k in ("resolve", "echo"))
        rows.append(
            Row(
                "(a) Resolve throughput (req/s)",
                fmt(ours["req_per_s"], digits=0),
                fmt(base["req_per_s"], digits=0) + " (echo)",
                text,
                ">= 0.8x",
                met(ratio >= 0.8 if ratio is not None and verified else None),
            )
        )
        for key, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
            text, _ = fmt_ratio(ours[key], base[key])
            rows.append(
                Row(
                    f"(a) Resolve latency {label} under load (ms)",
                    fmt(ours[key], digits=2),
                    fmt(base[key], digits=2) + " (echo)",
                    text,
                    "info",
                    "-",
                )
            )
        cpu_ours = median([r["resolve"]["server_cpu_us_per_req"] for r in a["rounds"]])
        cpu_base = median([r["echo"]["server_cpu_us_per_req"] for r in a["rounds"]])
        text, _ = fmt_ratio(cpu_ours, cpu_base)
        rows.append(
            Row(
                "(a) server CPU per request (us, lower is better)",
                fmt(cpu_ours, digits=0),
                fmt(cpu_base, digits=0) + " (echo)",
                text,
                "info",
                "-",
            )
        )
        notes.append(
            f"(a) load generator: h2load (nghttp2), -n {plan.h2load_requests} -c {plan.h2load_clients} "
            f"-m {plan.h2load_streams} -t 1 ({plan.h2load_clients * plan.h2load_streams} in flight) "
            f"after a {plan.h2load_warmup}-request warm-up, against one server process at a time; "
            f"{plan.h2load_repeats} round(s) of (control plane, echo), each server started afresh; "
            "throughput and latency are from the median-throughput run of each side, latency "
            "percentiles from h2load's --log-file, CPU/request is the median over rounds "
            "(server CPU-seconds from /proc / requests). Both servers have identical grpc.aio "
            f"options; the echo handler returns its {a['resolve_response_bytes']}-byte payload (the "
            "size of a Resolve response) untouched; the control plane (memory:// store, rate limits "
            f"off, JWT auth on) holds {plan.resolve_instances} healthy instances; round-robin resolve."
        )
        notes.append(
            "(a) per round req/s (resolve / echo = ratio): "
            + "; ".join(
                f"{r['resolve']['req_per_s']:,.0f} / {r['echo']['req_per_s']:,.0f} = "
                f"{r['resolve']['req_per_s'] / r['echo']['req_per_s']:.2f}x "
                f"(server CPU util {r['resolve']['server_cpu_util']:.2f} / {r['echo']['server_cpu_util']:.2f}, "
                f"load avg {r['resolve']['loadavg_1m']:.1f})"
                for r in a["rounds"]
            )
        )
        notes.append(
            "(a) verification: the exact request bytes were first sent through a Python gRPC client "
            "and decoded OK; for every h2load run, DATA bytes received must equal "
            "succeeded x (5 + response size) (a gRPC error is trailers-only, no DATA), and a Python "
            "client called Resolve ~20 times a second during each control-plane run checking the "
            f"status: all runs verified = {verified} ("
            + "; ".join(
                f"resolve data {r['resolve']['data_bytes']:,} B vs expected "
                f"{r['resolve']['data_bytes_expected'][0]:,}, sampler ok {r['resolve']['sampler_ok']} "
                f"errors {r['resolve']['sampler_errors']}; echo data {r['echo']['data_bytes']:,} B vs "
                f"{r['echo']['data_bytes_expected'][0]:,}"
                for r in a["rounds"]
            )
            + ")."
        )

    b = results.get("b_register")
    if b:
        ours, base = b["register"], b["raw_etcd"]
        text, ratio = fmt_ratio(ours["per_s"], base["per_s"])
        clean = all(r[k]["errors"] == 0 for r in b["rounds"] for k in ("register", "raw_etcd"))
        rows.append(
            Row(
                f"(b) Register on etcd (ops/s, {b['concurrency']} concurrent)",
                fmt(ours["per_s"], digits=0),
                fmt(base["per_s"], digits=0) + " (raw aetcd)",
                text,
                ">= 0.7x",
                met(ratio >= 0.7 if ratio is not None and clean else None),
            )
        )
        for key, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
            text, _ = fmt_ratio(ours[key], base[key])
            rows.append(
                Row(
                    f"(b) Register latency {label} (ms)",
                    fmt(ours[key], digits=2),
                    fmt(base[key], digits=2) + " (raw aetcd)",
                    text,
                    "info",
                    "-",
                )
            )
        notes.append(
            f"(b) {len(b['rounds'])} round(s) of (raw, Register), N={plan.register_n} ops each, "
            f"after {plan.register_warmup} warm-up ops each; headline = median-throughput round of "
            f"each side. {b['concurrency']} asyncio tasks on one client channel, in this script's "
            "process. Raw op = aetcd lease grant (ttl 3600) + put of a serialized "
            "ServiceRegistration under that lease. Register = JWT + validation, lease grant + "
            "create-only txn in etcd, then a wait until the control plane's own watch-fed index "
            "has applied the write (read-your-writes). etcd 3.5 single member on loopback "
            "(tests/etcd_server.py), data dir on local ext4, fsync on. Errors: "
            + ", ".join(f"{r['register']['errors']}/{r['raw_etcd']['errors']}" for r in b["rounds"])
            + " (register/raw per round)."
        )
        notes.append(
            "(b) per round ops/s (register / raw): "
            + "; ".join(
                f"{r['register']['per_s']:,.0f} / {r['raw_etcd']['per_s']:,.0f} "
                f"(load avg {r['register']['loadavg_1m']:.1f})"
                for r in b["rounds"]
            )
            + ". CPU per op in the median rounds (us): control plane "
            + fmt(ours.get("server_cpu_us_per_op"), digits=0)
            + f" (at {fmt(ours.get('server_cpu_util'), digits=2)} of a core), etcd "
            + fmt(ours.get("etcd_cpu_us_per_op"), digits=0)
            + " vs "
            + fmt(base.get("etcd_cpu_us_per_op"), digits=0)
            + " raw, client "
            + fmt(ours.get("client_cpu_us_per_op"), digits=0)
            + " vs "
            + fmt(base.get("client_cpu_us_per_op"), digits=0)
            + " raw."
        )

    c = results.get("c_watch")
    if c:
        for key in sorted(c, key=int):
            r = c[key]
            big = int(key) >= 1000
            lost = r["pairs_expected"] - r["pairs_received"]
            ok = (r["p99_ms"] <= 25.0 and lost == 0) if big else None
            rows.append(
                Row(
                    f"(c) write->watcher p50 / p99, {int(key):,} watcher(s) (ms)",
                    f"{fmt(r['p50_ms'], digits=2)} / {fmt(r['p99_ms'], digits=2)}",
                    "-",
                    "-",
                    "p99 <= 25 ms" if big else "info",
                    met(ok) if big else "-",
                )
            )
        notes.append(
            "(c) Watch streams (Watch of one service) run in their own child process(es), "
            f"{plan.watch_processes} process(es) over {plan.watch_channels} channels, recording raw "
            "bytes + CLOCK_MONOTONIC on arrival and decoding afterwards; the writer (UpdateHealth "
            "of one instance, sequential, fixed interval, health.response_time = sequence number) "
            "runs in this script's process. CLOCK_MONOTONIC is system-wide, so latency = arrival - "
            "time the write RPC was sent, over all (write, watcher) pairs. Control plane on memory://."
        )
        notes.append(
            "(c) "
            + "; ".join(
                f"{int(k):,} watcher(s): {c[k]['writes']} writes every {c[k]['interval_s'] * 1000:.0f} ms, "
                f"pairs received {c[k]['pairs_received']:,}/{c[k]['pairs_expected']:,}, max "
                f"{fmt(c[k]['max_ms'], digits=1)} ms, write RPC ack p50 {fmt(c[k]['write_ack']['p50_ms'], digits=2)} ms; "
                f"control-plane CPU {fmt(c[k]['cp_cpu_util'], digits=2)} of a core = "
                f"{fmt(c[k]['cp_cpu_util'] * c[k]['interval_s'] * 1e3, digits=1)} ms CPU per write"
                + (
                    f" (~{fmt(c[k]['cp_cpu_util'] * c[k]['interval_s'] * 1e6 / int(k), digits=0)} us "
                    "per delivered event)"
                    if int(k) >= 100
                    else ""
                )
                + f"; watcher process(es) {fmt(c[k]['watchers_cpu_us_per_event'], digits=0)} us CPU per event"
                for k in sorted(c, key=int)
            )
        )

    d = results.get("d_scale")
    if d and len(d["sizes"]) >= 2:
        keys = sorted(d["sizes"], key=int)
        small, big = d["sizes"][keys[0]], d["sizes"][keys[-1]]
        small_label, big_label = f"{int(keys[0]):,}", f"{int(keys[-1]):,}"
        for key, label, target, limit in (
            ("p50_ms", "p50", "info", None),
            ("p99_ms", "p99", "<= 1.2x", 1.2),
        ):
            text, ratio = fmt_ratio(big["resolve"][key], small["resolve"][key])
            ok = None if limit is None or ratio is None else ratio <= limit
            rows.append(
                Row(
                    f"(d) Resolve {label} at {big_label} vs {small_label} instances (ms)",
                    fmt(big["resolve"][key], digits=3),
                    fmt(small["resolve"][key], digits=3),
                    text,
                    target,
                    met(ok) if limit is not None else "-",
                )
            )
        text, _ = fmt_ratio(big["rss_kib"], small["rss_kib"])
        rows.append(
            Row(
                f"(d) control-plane RSS at {big_label} vs {small_label} instances (MiB)",
                fmt(big["rss_kib"] / 1024),
                fmt(small["rss_kib"] / 1024),
                text,
                "info",
                "-",
            )
        )
        per_instance = (
            (big["rss_kib"] - small["rss_kib"])
            * 1024
            / max(1, big["registered"] - small["registered"])
        )
        bulk = big["bulk_register"]
        notes.append(
            f"(d) sequential Resolve (1 client, {plan.resolve_batches} batches of {plan.resolve_calls} "
            f"calls after {plan.resolve_warmup} warm-up; p50/p99 = median over batches; pooled p99 "
            f"{fmt(big['resolve']['pooled']['p99_ms'], digits=3)} vs "
            f"{fmt(small['resolve']['pooled']['p99_ms'], digits=3)} ms, max "
            f"{fmt(big['resolve']['pooled']['max_ms'], digits=1)} vs "
            f"{fmt(small['resolve']['pooled']['max_ms'], digits=1)} ms; batch p99s "
            + ", ".join(fmt(b["p99_ms"], digits=2) for b in big["resolve"]["batches"])
            + " vs "
            + ", ".join(fmt(b["p99_ms"], digits=2) for b in small["resolve"]["batches"])
            + f") of a service with {plan.resolve_instances} healthy instances; the other "
            "instances belong to services of 100 instances each. Instances registered through the "
            f"Register RPC ({plan.scale_register_concurrency} concurrent, 4 channels, memory:// store): "
            f"index holds {small['index_total']:,} then {big['index_total']:,}; the last "
            f"{bulk['done']:,} registrations took {bulk['seconds']:.1f} s ({bulk['per_s']:.0f}/s, "
            f"{bulk['errors']} errors); Resolve errors {big['resolve']['errors']} / "
            f"{small['resolve']['errors']}. RSS {d['empty_rss_kib'] / 1024:.1f} MiB empty; "
            f"~{per_instance / 1024:.2f} KiB per added instance (index + in-memory sqlite store)."
        )
    notes.append(
        "Control planes ran with active health checks "
        + ("ON (--health-checks)" if health_checks else "off (health_checks_enabled=False)")
        + "; the registered instances' endpoints are unreachable addresses."
    )
    if quick:
        notes.append("--quick run: smaller sizes than the targets are defined for.")
    return rows, notes


# ==========================================================================================
# main
# ==========================================================================================


SCENARIOS = ("throughput", "register", "watch", "scale")


async def orchestrate(args: argparse.Namespace) -> int:
    plan = QUICK if args.quick else FULL
    if args.watch_processes:
        plan = dataclasses.replace(plan, watch_processes=args.watch_processes)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="lucid-bench-"))
    children = Children(workdir)
    profile_dir = Path(args.profile_dir).resolve() if args.profile_dir else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    bench = Bench(plan, workdir, children, profile_dir, args.health_checks)
    steps: dict[str, Callable[[], Awaitable[None]]] = {
        "throughput": bench.throughput,
        "register": bench.register_vs_etcd,
        "watch": bench.watch_latency,
        "scale": bench.scale,
    }
    # SIGTERM/SIGHUP cancel the run like Ctrl-C does, so every ``finally`` (children) runs.
    main_task = asyncio.current_task()
    assert main_task is not None
    for sig in (signal.SIGTERM, signal.SIGHUP):
        asyncio.get_running_loop().add_signal_handler(sig, main_task.cancel)
    failed: list[str] = []
    timings: dict[str, float] = {}
    loads: dict[str, float] = {}
    try:
        for name in args.only or SCENARIOS:
            t = time.monotonic()
            loads[name] = os.getloadavg()[0]
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            try:
                await steps[name]()
            except Exception:
                failed.append(name)
                print(f"[bench] {name} FAILED:\n{traceback.format_exc()}", file=sys.stderr)
            timings[name] = time.monotonic() - t
            print(f"[bench] {name} done in {timings[name]:.1f} s", file=sys.stderr, flush=True)
    finally:
        children.close()
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    total = time.monotonic() - started
    rows, notes = build_report(bench.results, plan, args.quick, args.health_checks)
    if failed:
        notes.append(f"FAILED benchmarks (see stderr): {', '.join(failed)}")
    notes.append(
        f"Run took {total:.0f} s ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
        + f") on {os.cpu_count()} CPUs; Python {sys.version.split()[0]}, grpcio {grpc.__version__}. "
        "1-minute load average when each benchmark started (other work shares this machine): "
        + ", ".join(f"{k} {v:.1f}" for k, v in loads.items())
        + "."
    )
    print(markdown_table(rows, notes))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "plan": plan.__dict__,
                    "results": bench.results,
                    "timings_s": timings,
                    "loadavg": loads,
                    "total_s": total,
                    "failed": failed,
                },
                indent=2,
                default=str,
            )
        )
    if args.keep_workdir:
        print(f"[bench] work dir kept: {workdir}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller run")
    parser.add_argument("--json", metavar="PATH", help="also write every raw number to PATH")
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, help="run only these benchmarks")
    parser.add_argument(
        "--watch-processes",
        type=int,
        help="client processes the Watch streams are spread over (default 1)",
    )
    parser.add_argument(
        "--health-checks",
        action="store_true",
        help="leave the control plane's active health checks on (off by default: the "
        "benchmark's instances are unreachable, so probes only fail)",
    )
    parser.add_argument("--profile-dir", help="run control planes under cProfile, dump stats here")
    parser.add_argument("--keep-workdir", action="store_true", help="keep logs and h2load files")
    # Child roles (internal).
    parser.add_argument("--role", choices=("echo", "cp", "watchers"), help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--channels", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--service", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.role == "echo":
        asyncio.run(serve_echo(server_options()))
        return 0
    if args.role == "cp":
        asyncio.run(role_control_plane(args.store, args.profile_out, args.health_checks))
        return 0
    if args.role == "watchers":
        asyncio.run(role_watchers(args.target, args.count, args.channels, args.service, args.out))
        return 0
    try:
        return asyncio.run(orchestrate(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("[bench] interrupted; child processes stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
