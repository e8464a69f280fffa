"""The Markdown report of a sidecar run: the table (ours, raw gRPC baseline, ratio, target) and
the notes that say how it was measured and what missed."""

from __future__ import annotations

import argparse
import os
from typing import Any

from scripts.bench.report import Row, fmt, fmt_ratio, markdown_table, met

TARGET_P99_MS = {100: 20.0, 1000: 150.0}


def _p(r: dict[str, Any]) -> str:
    return f"{fmt(r['p50_ms'], digits=1)} / {fmt(r['p99_ms'], digits=1)} / {fmt(r['max_ms'], digits=1)}"


def _side_by_side(
    label: str,
    key: str,
    ours: dict[str, Any] | None,
    base: dict[str, Any] | None,
    *,
    digits: int = 1,
    target: str = "-",
    ok: str = "-",
) -> Row:
    """A row comparing one figure of our run with the same figure of the raw baseline."""
    a = ours[key] if ours else None
    b = base[key] if base else None
    return Row(label, fmt(a, digits=digits), fmt(b, digits=digits), fmt_ratio(a, b)[0], target, ok)


def build_report(results: dict[str, Any], problems: list[str], args: argparse.Namespace) -> str:
    rows: list[Row] = []
    notes: list[str] = []
    push = results.get("push", {})
    raw = results.get("baseline", {})
    for key in sorted(set(push) | set(raw), key=int):
        n = int(key)
        ours, base = push.get(key), raw.get(key)
        target = TARGET_P99_MS.get(n)
        judged = "info", "-"
        if target is not None:
            ok = (
                bool(ours)
                and ours["median_p99_ms"] <= target
                and ours["received"] == ours["expected"]
            )
            judged = f"p99 <= {target:.0f} ms", met(ok if ours else None)
        rows.append(
            _side_by_side(
                f"(1) push, {n:,} stream(s): median of per-write p99 (ms)",
                "median_p99_ms",
                ours,
                base,
                target=judged[0],
                ok=judged[1],
            )
        )
        row = _side_by_side(
            f"(1) push, {n:,}: p50 / p99 / max over all writes (ms)", "p99_ms", ours, base
        )
        row.ours, row.baseline = (_p(ours) if ours else "n/a"), (_p(base) if base else "n/a")
        rows.append(row)
        if n > 1:
            for what, k in (("first stream has", "median_first_ms"), ("all have", "median_all_ms")):
                label = f"(1) push, {n:,}: {what} it, median per write (ms)"
                rows.append(_side_by_side(label, k, ours, base))
        rows.append(
            _side_by_side(
                f"(1) push, {n:,}: server CPU per pushed snapshot (us)",
                "server_cpu_us_per_snapshot_idle_subtracted",
                ours,
                base,
                digits=0,
                target="info",
            )
        )
        if n >= 100:
            label = f"(1) {n:,} connected: server RSS per stream (KiB)"
            rows.append(_side_by_side(label, "kib_per_stream", ours, base, target="info"))
    for key in sorted(push, key=int):
        r = push[key]
        notes.append(
            f"(1) {int(key):,} stream(s), {r['client_processes']} client process(es): received "
            f"{r['received']:,}/{r['expected']:,} snapshots (extra {r['extra_snapshots']}, stray "
            f"{r['stray_snapshots']}), snapshot {r['snapshot_bytes']:,} bytes; per-write p99 "
            + ", ".join(fmt(s["p99_ms"]) for s in r["per_write"])
            + f" ms (worst {fmt(r['worst_p99_ms'])}); write RPC "
            + ", ".join(fmt(x) for x in r["write_ms"])
            + f" ms; CP CPU {fmt(r['server_cpu_s'] * 1e3, digits=0)} ms over {r['writes']} writes "
            f"({fmt(r['server_cpu_us_per_snapshot'], digits=0)} us per snapshot before subtracting "
            f"the idle {fmt(r['server_idle_cpu_per_s'] * 100, digits=1)} % of a core); clients "
            f"{fmt(r['client_cpu_us_per_snapshot'], digits=0)} us CPU per snapshot; RSS "
            f"{r['rss_before_kib'] / 1024:.1f} -> {r['rss_after_kib'] / 1024:.1f} MiB; streams "
            f"opened in {r['open_s']:.1f} s."
        )
    for key in sorted(raw, key=int):
        r = raw[key]
        notes.append(
            f"(3) raw {int(key):,}: received {r['received']:,}/{r['expected']:,}, message "
            f"{r['snapshot_bytes']} bytes, RSS {r['rss_before_kib'] / 1024:.1f} -> "
            f"{r['rss_after_kib'] / 1024:.1f} MiB."
        )
    e = results.get("endpoints", {}).get(str(args.endpoint_streams))
    if e:
        others = e["streams"] - e["callers"]
        rows.append(
            Row(
                f"(2) endpoint change -> {e['callers']} of {e['streams']:,}: p50 / p99 / max (ms)",
                _p(e),
                "-",
                "-",
                "info",
                "-",
            )
        )
        rows.append(
            Row(
                f"(2) snapshots received by the other {others:,}",
                f"{e['others_snapshots']} (on {e['others_with_snapshots']} streams)",
                "-",
                "-",
                "0",
                met(e["others_snapshots"] == 0),
            )
        )
        full = push.get(str(e["streams"]))
        full_ms = (
            full["server_cpu_us_per_snapshot_idle_subtracted"] * full["streams"] / 1e3
            if full
            else None
        )
        rows.append(
            Row(
                "(2) CP CPU per endpoint change (ms)",
                fmt(e["server_cpu_ms_per_change_idle_subtracted"]),
                f"{fmt(full_ms)} (a push to all {e['streams']:,})" if full_ms else "-",
                fmt_ratio(e["server_cpu_ms_per_change_idle_subtracted"], full_ms)[0],
                "info",
                "-",
            )
        )
        notes.append(
            f"(2) {e['changes']} changes of bench-target's endpoints (alternately a spare "
            "instance marked healthy, then deregistered); callers received "
            f"{e['caller_snapshots']}/{e['caller_snapshots_expected']} snapshots, stray "
            f"{e['stray_snapshots']}; per-change p99 "
            + ", ".join(fmt(s["p99_ms"]) for s in e["per_write"])
            + " ms; write RPC "
            + ", ".join(fmt(x) for x in e["write_ms"])
            + f" ms; {e['client_processes']} client processes; streams opened in "
            f"{e['open_s']:.1f} s."
        )
    connections = (
        "one HTTP/2 connection per stream"
        if not args.channels
        else f"{args.channels} connection(s) per client process"
    )
    notes.append(
        f"Machine: {os.cpu_count()} cores shared by the server, the {args.clients} client "
        "processes and this orchestrator (which sends the writes); no pinning. Streams are split "
        f"evenly over the client processes (1 process for N = 1), {connections}; each client "
        "records CLOCK_MONOTONIC on arrival (system-wide, so comparable with the writer's t0) and "
        "ACKs at once. Latency = arrival of the first snapshot of version >= the write's revision "
        "- time just before the write call (so it includes the write RPC)."
    )
    notes.append(
        "Control plane: `lucid-cp serve --store memory:// --no-gateway --no-rate-limits "
        "--no-health-checks` (a fresh one per scenario). Baseline: bare grpc.aio server, same "
        "server options, same Connect method and client; a push is one unary Push RPC that "
        "queues one 20-byte ConnectResponse to every stream (no build, no diff, no receipts)."
    )
    notes.append(
        "CPU from /proc/<pid>/stat (10 ms ticks) over [just before each write, all arrived + "
        "0.3 s], the server's idle rate subtracted; at N = 1 it is below the tick resolution. "
        "RSS per stream = (RSS after all N connected + 1 s - RSS before) / N."
    )
    if problems:
        notes.append("CONTROL-PLANE LOG PROBLEMS: " + " | ".join(problems))
    return markdown_table(rows, notes)
