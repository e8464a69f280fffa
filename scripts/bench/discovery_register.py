"""(b) Register RPC on a control plane backed by a real etcd vs raw aetcd lease grant + put
with that lease, at equal concurrency."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2_grpc
from scripts.bench.children import etcd_pid, start_etcd
from scripts.bench.common import CHANNEL_OPTIONS, LOOPBACK, cpu_seconds, median_run
from scripts.bench.discovery_common import RPC_TIMEOUT, Bench, registration
from scripts.bench.discovery_plan import Plan
from scripts.bench.load import run_load
from scripts.bench.report import Row, fmt, fmt_ratio, met


async def run(bench: Bench) -> None:
    """Rounds of (raw aetcd, Register RPC) against one etcd; the control plane sits idle
    while the raw client runs (its index watches only the discovery prefix)."""
    import aetcd

    p = bench.plan
    etcd = start_etcd(bench.children, bench.workdir)
    pid_of_etcd = etcd_pid(etcd)
    rounds: list[dict[str, Any]] = []
    try:
        value = registration("bench-raw", 0).registration.SerializeToString()
        client = aetcd.Client(
            LOOPBACK, etcd.client_port, timeout=RPC_TIMEOUT, options=dict(CHANNEL_OPTIONS)
        )
        await client.connect()
        cp = bench.start_cp("cp-etcd", etcd.url)
        try:
            async with bench.channel(cp) as chan:
                stub = discovery_pb2_grpc.DiscoveryServiceStub(chan)

                async def raw_op(i: int) -> None:
                    lease = await client.lease(3600)
                    await client.put(f"/bench/raw/{i:08d}".encode(), value, lease=lease.id)

                async def register_op(i: int) -> None:
                    await stub.Register(
                        registration("bench-register", i), metadata=bench.md, timeout=RPC_TIMEOUT
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
                    raw = await _measured(bench, raw_op, offset, None, pid_of_etcd)
                    ours = await _measured(bench, register_op, offset, cp.pid, pid_of_etcd)
                    rounds.append({"raw_etcd": raw, "register": ours})
        finally:
            bench.children.stop(cp)
            await client.close()
    finally:
        etcd.cleanup()
    bench.results["b_register"] = {
        "rounds": rounds,
        "register": median_run([r["register"] for r in rounds], "per_s"),
        "raw_etcd": median_run([r["raw_etcd"] for r in rounds], "per_s"),
        "concurrency": p.register_concurrency,
    }


async def _measured(
    bench: Bench,
    op: Callable[[int], Awaitable[Any]],
    offset: int,
    server_pid: int | None,
    etcd_pid: int | None,
) -> dict[str, Any]:
    """One load run of register_n ops, with the CPU every party spent on it."""
    p = bench.plan
    client_cpu = time.process_time()
    server_cpu = cpu_seconds(server_pid) if server_pid else 0.0
    etcd_cpu = cpu_seconds(etcd_pid) if etcd_pid else 0.0
    result = await run_load(p.register_n, p.register_concurrency, op, budget_s=180, offset=offset)
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


def report(results: dict[str, Any], plan: Plan, rows: list[Row], notes: list[str]) -> None:
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
