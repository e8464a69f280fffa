"""Sidecar config distribution over the Connect stream, side by side with raw gRPC fan-out.

    python -m scripts.bench sidecar                      # N = 1, 100, 1000 (~1-2 min on 2 cores)
    python -m scripts.bench sidecar --streams 100        # one size
    python -m scripts.bench sidecar --json out.json      # also dump every raw number

(1) Policy push: N connected sidecars (N = --streams), one admin write affecting all of them
    (MeshService.CreateTrafficPolicy, source bench-app), repeated --writes times: per-stream
    latency write -> snapshot arrival (p50/p99/max, time until all have it, median of per-write
    p99s), control-plane CPU per pushed snapshot, RSS per connected sidecar.
(2) Endpoint change affecting 10 of 1000: arrival at the 10 sidecars routing to the changed
    service, snapshots received by the other 990 (must be 0), control-plane CPU per change.
(3) Baseline: the same N streams of the same client processes on a bare grpc.aio server that
    pushes one small message to all of them per "write" (a unary Push RPC).

The control plane is a real ``lucid-cp serve`` child (memory store, gRPC only, rate limits and
active health checks off). The sidecars are streams in --clients child processes (one HTTP/2
connection per stream unless --channels), sharing the machine's cores with the server. Every
child is stopped on the way out, also on errors and SIGTERM. Only loopback is used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import grpc

from scripts.bench.children import Children
from scripts.bench.sidecar_common import SidecarBench
from scripts.bench.sidecar_endpoints import run_endpoints
from scripts.bench.sidecar_push import run_baseline, run_push
from scripts.bench.sidecar_report import build_report
from scripts.bench.sidecar_roles import role_push_server, role_sidecars

SCENARIOS = ("push", "baseline", "endpoints")


async def orchestrate(
    args: argparse.Namespace, profile_dir: Path | None
) -> tuple[int, dict[str, Any]]:
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="lucid-bench-sidecar-"))
    children = Children(workdir)
    bench = SidecarBench(workdir, children, args.clients, args.channels, profile_dir)
    main_task = asyncio.current_task()
    assert main_task is not None
    for sig in (signal.SIGTERM, signal.SIGHUP):
        asyncio.get_running_loop().add_signal_handler(sig, main_task.cancel)
    only = set(args.only or SCENARIOS)
    steps: list[tuple[str, str, str, Callable[[], Awaitable[dict[str, Any]]]]] = []
    for n in args.streams:
        if "push" in only:
            steps.append((f"push {n}", "push", str(n), partial(run_push, bench, n, args.writes)))
        if "baseline" in only:
            run = partial(run_baseline, bench, n, args.writes)
            steps.append((f"baseline {n}", "baseline", str(n), run))
    if "endpoints" in only:
        n = args.endpoint_streams
        run = partial(run_endpoints, bench, n, args.callers, args.changes)
        steps.append(("endpoints", "endpoints", str(n), run))
    failed: list[str] = []
    timings: dict[str, float] = {}
    loads: dict[str, float] = {}
    try:
        for label, kind, key, step in steps:
            t = time.monotonic()
            loads[label] = os.getloadavg()[0]
            print(f"[bench] {label} ...", file=sys.stderr, flush=True)
            try:
                bench.results.setdefault(kind, {})[key] = await step()
            except Exception:
                failed.append(label)
                print(f"[bench] {label} FAILED:\n{traceback.format_exc()}", file=sys.stderr)
            timings[label] = time.monotonic() - t
            print(f"[bench] {label} done in {timings[label]:.1f} s", file=sys.stderr, flush=True)
    finally:
        children.close()
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    total = time.monotonic() - started
    report = build_report(bench.results, bench.problems, args)
    if failed:
        report += f"\n- FAILED (see stderr): {', '.join(failed)}"
    report += (
        f"\n- Run took {total:.0f} s on {os.cpu_count()} CPUs; Python {sys.version.split()[0]}, "
        f"grpcio {grpc.__version__}. 1-minute load average when each step started (other work "
        "shares this machine): " + ", ".join(f"{k} {v:.1f}" for k, v in loads.items()) + "."
    )
    print(report)
    record = {
        "args": {k: v for k, v in vars(args).items() if not k.startswith("role")},
        "results": bench.results,
        "control_plane_problems": bench.problems,
        "timings_s": timings,
        "loadavg": loads,
        "total_s": total,
        "failed": failed,
    }
    if args.keep_workdir:
        print(f"[bench] work dir kept: {workdir}", file=sys.stderr)
    return (1 if failed or bench.problems else 0), record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.bench sidecar",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--streams",
        type=int,
        nargs="+",
        default=[1, 100, 1000],
        help="connected sidecars of the policy push and its baseline (default 1 100 1000)",
    )
    parser.add_argument("--writes", type=int, default=5, help="writes per size (default 5)")
    parser.add_argument(
        "--clients", type=int, default=2, help="client processes holding the streams (default 2)"
    )
    parser.add_argument(
        "--channels",
        type=int,
        default=0,
        help="channels (HTTP/2 connections) per client process; 0 (default): one per stream",
    )
    parser.add_argument(
        "--endpoint-streams", type=int, default=1000, help="sidecars of (2) (default 1000)"
    )
    parser.add_argument("--callers", type=int, default=10, help="of them routing to the target")
    parser.add_argument(
        "--changes", type=int, default=6, help="endpoint changes in (2) (default 6)"
    )
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, help="run only these")
    parser.add_argument("--json", metavar="PATH", help="also write every raw number to PATH")
    parser.add_argument(
        "--profile-dir", help="run the control planes under cProfile, dump stats here"
    )
    parser.add_argument("--keep-workdir", action="store_true", help="keep logs and dumps")
    # Child roles (internal).
    parser.add_argument("--role", choices=("sidecars", "pushserver"), help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--streams-file", dest="streams_file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.role == "sidecars":
        asyncio.run(role_sidecars(args.target, args.streams_file, args.channels))
        return 0
    if args.role == "pushserver":
        asyncio.run(role_push_server())
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
