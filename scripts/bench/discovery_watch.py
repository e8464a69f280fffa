"""(c) Write-to-watcher latency (UpdateHealth -> UPDATED event) with 1 and many Watch streams;
the watch streams live in their own process (the ``watchers`` role)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.api.lucid.discovery.v1 import discovery_pb2_grpc
from scripts.bench.children import Child
from scripts.bench.common import cpu_seconds, latency_summary, monotonic_ns
from scripts.bench.discovery_common import ROLE_ARGV, RPC_TIMEOUT, Bench
from scripts.bench.discovery_plan import Plan
from scripts.bench.report import Row, fmt, met


async def run(bench: Bench) -> None:
    p = bench.plan
    cp = bench.start_cp("cp-watch", "memory://")
    out: dict[str, Any] = {}
    try:
        async with bench.channel(cp) as chan:
            stub = discovery_pb2_grpc.DiscoveryServiceStub(chan)
            reg, ids = await bench.register_many(
                stub, lambda _i: "watch-target", 3, offset=0, concurrency=1, budget_s=30
            )
            if len(ids) != 3:
                raise RuntimeError(f"seeding the watched service failed: {reg.errors[:3]}")
            for watchers in p.watch_counts:
                out[str(watchers)] = await _watch_round(bench, cp, stub, ids[0], watchers)
    finally:
        bench.children.stop(cp)
    bench.results["c_watch"] = out


async def _watch_round(
    bench: Bench,
    cp: Child,
    stub: discovery_pb2_grpc.DiscoveryServiceStub,
    service_id: str,
    watchers: int,
) -> dict[str, Any]:
    p = bench.plan
    writes_n, interval = p.watch_writes[watchers], p.watch_interval_s[watchers]
    processes = max(1, min(p.watch_processes, watchers))
    pools: list[tuple[Child, Path]] = []
    try:
        for number in range(processes):
            count = watchers // processes + (1 if number < watchers % processes else 0)
            out_file = bench.workdir / f"watch-{watchers}-{number}.json"
            argv = [
                *ROLE_ARGV,
                "watchers",
                "--target",
                bench.target(cp),
                "--count",
                str(count),
                "--channels",
                str(max(1, min(count, p.watch_channels // processes))),
                "--service",
                "watch-target",
                "--out",
                str(out_file),
            ]
            pool = bench.children.start(
                f"watchers-{watchers}-{number}", argv, ready_timeout=180, env=bench.env()
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
                metadata=bench.md,
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
            bench.children.stop(pool)
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


def report(results: dict[str, Any], plan: Plan, rows: list[Row], notes: list[str]) -> None:
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
