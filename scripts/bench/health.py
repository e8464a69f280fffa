"""How many instances one replica can actively check at a 10 s interval on this machine.

    python -m scripts.bench health                          # 2000, 5000 and 10000 instances
    python -m scripts.bench health --sizes 10000 --window 30

For each size: a memory store and the real discovery index and HealthChecker (one replica,
HTTP checks, production time scale 1.0), N instances registered through the Registry, all
pointing at one asyncio HTTP/1.1 target server on 127.0.0.1 that runs in a separate process
(so its CPU is not counted). After one interval of warm-up (every instance has had its first,
randomly phased, round) it measures for ``--window`` seconds:

* achieved rounds/s against the required N / interval;
* lateness (how long after its due time a round got its first probe slot), p50 / p99 / max;
* probe latency p50 / p99;
* CPU of the checker process (process_time / wall time; 100 % = one core);
* store writes during the window (steady state must write nothing);
* how long after the checker started every instance was healthy in the index (first rounds
  are spread over one interval, so about one interval is the floor).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import sys
import time
import uuid
from dataclasses import dataclass, field

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.auth.tokens import Principal, Role
from lucid_cp.clock import SystemClock
from lucid_cp.discovery.health import (
    HealthChecker,
    HttpProber,
    ProtocolProber,
    StaticMembership,
    TcpProber,
)
from lucid_cp.discovery.index import InstanceIndex
from lucid_cp.discovery.registry import Registry
from lucid_cp.store.memory import MemoryStore

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def _serve(port_queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(RESPONSE)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096)
        port_queue.put(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(main())


@dataclass
class Recorder:
    recording: bool = False
    rounds: int = 0
    failures: int = 0
    lateness: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)

    def round_done(self, kind: str, outcome: str, seconds: float, lateness: float) -> None:
        if self.recording:
            self.rounds += 1
            self.failures += outcome == "fail"
            self.lateness.append(lateness)
            self.latency.append(seconds)

    def transition(self, before: int, after: int) -> None:
        return None


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _registration(port: int, interval: int, timeout: int) -> pb.ServiceRegistration:
    reg = pb.ServiceRegistration(
        service_id=str(uuid.uuid4()),
        service_name="bench-target",
        cluster=pb.CLUSTER_SESSION_MANAGEMENT,
        plane=pb.PLANE_OPS,
        version="1.0.0",
        ttl=3600,
        weight=100,
    )
    reg.endpoint.host, reg.endpoint.port, reg.endpoint.protocol = (
        "127.0.0.1",
        port,
        pb.PROTOCOL_HTTP,
    )
    reg.health_check.MergeFrom(
        pb.HealthCheckConfig(
            endpoint="/health",
            interval=interval,
            timeout=timeout,
            retries=1,
            success_threshold=1,
            failure_threshold=3,
        )
    )
    return reg


async def run(size: int, port: int, args: argparse.Namespace) -> dict[str, float]:
    store = MemoryStore()
    index = InstanceIndex(store, clock=SystemClock())
    await index.start()
    registry = Registry(store, index, SystemClock())
    admin = Principal("bench", Role.ADMIN)
    started = time.perf_counter()
    regs = [_registration(port, args.interval, args.timeout) for _ in range(size)]
    for batch in range(0, size, 500):
        await asyncio.gather(*(registry.register(admin, r) for r in regs[batch : batch + 500]))
    setup = time.perf_counter() - started

    recorder = Recorder()
    checker = HealthChecker(
        store,
        index,
        SystemClock(),
        ProtocolProber(HttpProber(), TcpProber()),
        StaticMembership("bench"),
        observer=recorder,
        max_concurrency=args.max_concurrency,
    )
    started = time.perf_counter()
    await checker.start()
    # Warm-up: every instance has had its first (randomly phased) round and its
    # unknown -> healthy transition is written; then at least one more full interval.
    while sum(1 for i in index.ordered() if i.status == pb.HEALTH_STATE_HEALTHY) < size:
        if time.perf_counter() - started > 10 * args.interval:
            raise SystemExit(f"{size} instances: not all healthy after {10 * args.interval}s")
        await asyncio.sleep(0.1)
    all_healthy = time.perf_counter() - started
    await asyncio.sleep(max(0.0, args.interval * 1.2 - all_healthy))
    revision = await store.current_revision()
    recorder.recording = True
    wall0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.sleep(args.window)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    recorder.recording = False
    writes = await store.current_revision() - revision
    await checker.stop()
    await index.stop()
    await store.close()
    return {
        "instances": size,
        "setup_s": setup,
        "all_healthy_s": all_healthy,
        "required_per_s": size / args.interval,
        "achieved_per_s": recorder.rounds / wall,
        "failed_rounds": recorder.failures,
        "late_p50_ms": _pct(recorder.lateness, 0.5) * 1000,
        "late_p99_ms": _pct(recorder.lateness, 0.99) * 1000,
        "late_max_ms": max(recorder.lateness, default=float("nan")) * 1000,
        "probe_p50_ms": _pct(recorder.latency, 0.5) * 1000,
        "probe_p99_ms": _pct(recorder.latency, 0.99) * 1000,
        "cpu_pct": 100 * cpu / wall,
        "steady_writes": writes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.bench health",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sizes", default="2000,5000,10000")
    parser.add_argument("--interval", type=int, default=10, help="check interval, seconds")
    parser.add_argument("--timeout", type=int, default=2, help="check timeout, seconds")
    parser.add_argument("--window", type=float, default=20.0, help="measured seconds per size")
    parser.add_argument("--max-concurrency", type=int, default=1000)
    args = parser.parse_args(argv)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 65536)), hard))
    spawn = multiprocessing.get_context("spawn")
    ports: multiprocessing.Queue = spawn.Queue()  # type: ignore[type-arg]
    server = spawn.Process(target=_serve, args=(ports,), daemon=True)
    server.start()
    port = ports.get(timeout=30)
    try:
        header = (
            f"{'instances':>9} {'need/s':>7} {'got/s':>7} {'fail':>5} {'late p50':>9} "
            f"{'late p99':>9} {'late max':>9} {'probe p50':>10} {'probe p99':>10} {'cpu%':>6} "
            f"{'writes':>6} {'all healthy':>11}"
        )
        print(
            f"interval {args.interval}s, timeout {args.timeout}s, window {args.window:g}s, "
            f"max concurrency {args.max_concurrency}, python {sys.version.split()[0]}, "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start"
        )
        print(header)
        for size in (int(s) for s in args.sizes.split(",")):
            r = asyncio.run(run(size, port, args))
            print(
                f"{r['instances']:>9} {r['required_per_s']:>7.0f} {r['achieved_per_s']:>7.1f} "
                f"{r['failed_rounds']:>5.0f} {r['late_p50_ms']:>7.2f}ms {r['late_p99_ms']:>7.2f}ms "
                f"{r['late_max_ms']:>7.1f}ms {r['probe_p50_ms']:>8.2f}ms {r['probe_p99_ms']:>8.2f}ms "
                f"{r['cpu_pct']:>6.1f} {r['steady_writes']:>6.0f} {r['all_healthy_s']:>10.1f}s",
                flush=True,
            )
    finally:
        server.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
