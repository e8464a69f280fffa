"""Discovery benchmarks, side by side with their baselines, in one run.

    python -m scripts.bench discovery            # full run (~5-10 min on 2 cores)
    python -m scripts.bench discovery --quick    # smaller run (~1-2 min)
    python -m scripts.bench discovery --json out.json   # also dump every raw number

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
One module per benchmark (scripts/bench/discovery_*.py); this one runs them and reports.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc

from scripts.bench import (
    discovery_register,
    discovery_scale,
    discovery_throughput,
    discovery_watch,
)
from scripts.bench.children import Children
from scripts.bench.discovery_common import Bench, server_options
from scripts.bench.discovery_plan import FULL, QUICK, Plan
from scripts.bench.discovery_roles import role_control_plane, role_watchers
from scripts.bench.load import serve_echo
from scripts.bench.report import Row, markdown_table

# Name -> module with ``run(bench)`` and ``report(results, plan, rows, notes)``, in run and
# report order.
BENCHMARKS: dict[str, ModuleType] = {
    "throughput": discovery_throughput,
    "register": discovery_register,
    "watch": discovery_watch,
    "scale": discovery_scale,
}
SCENARIOS = tuple(BENCHMARKS)


def build_report(
    results: dict[str, Any], plan: Plan, quick: bool, health_checks: bool
) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    notes: list[str] = []
    for module in BENCHMARKS.values():
        module.report(results, plan, rows, notes)
    notes.append(
        "Control planes ran with active health checks "
        + ("ON (--health-checks)" if health_checks else "off (health_checks_enabled=False)")
        + "; the registered instances' endpoints are unreachable addresses."
    )
    if quick:
        notes.append("--quick run: smaller sizes than the targets are defined for.")
    return rows, notes


async def orchestrate(
    args: argparse.Namespace, profile_dir: Path | None
) -> tuple[int, dict[str, Any]]:
    """Runs the chosen benchmarks, prints the report; returns the exit code and every raw
    number (for ``--json``)."""
    plan = QUICK if args.quick else FULL
    if args.watch_processes:
        plan = dataclasses.replace(plan, watch_processes=args.watch_processes)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="lucid-bench-"))
    children = Children(workdir)
    bench = Bench(plan, workdir, children, profile_dir, args.health_checks)
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
                await BENCHMARKS[name].run(bench)
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
    record = {
        "plan": plan.__dict__,
        "results": bench.results,
        "timings_s": timings,
        "loadavg": loads,
        "total_s": total,
        "failed": failed,
    }
    if args.keep_workdir:
        print(f"[bench] work dir kept: {workdir}", file=sys.stderr)
    return (1 if failed else 0), record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.bench discovery",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
        out = asyncio.run(role_watchers(args.target, args.count, args.channels, args.service))
        if out is not None:
            Path(args.out).write_text(json.dumps(out))
        return 0
    profile_dir = Path(args.profile_dir).resolve() if args.profile_dir else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    try:
        code, record = asyncio.run(orchestrate(args, profile_dir))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("[bench] interrupted; child processes stopped", file=sys.stderr)
        return 130
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2, default=str))
    return code


if __name__ == "__main__":
    sys.exit(main())
