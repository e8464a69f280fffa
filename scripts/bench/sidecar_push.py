"""(1) Policy push to N connected sidecars, and (3) its raw baseline: the same N streams of the
same client processes on a bare grpc.aio server that pushes one small message to all of them.

(1): N instances of "bench-app" and 3 of "bench-dest" registered and healthy; N Connect streams
(each its own instance, a service token of bench-app) ACK every snapshot. Each write is one
MeshService.CreateTrafficPolicy (source bench-app, destination bench-dest, a new name each
time), which changes every one of the N snapshots. Latency per stream: from just before the
write call to the arrival of its first snapshot of version >= the write's revision.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from google.protobuf import json_format

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2_grpc
from lucid_cp.api.lucid.mesh.v1 import mesh_pb2 as mpb
from lucid_cp.api.lucid.mesh.v1 import mesh_pb2_grpc
from scripts.bench.sidecar_common import (
    PUSH_METHOD,
    RPC_TIMEOUT,
    Connected,
    SidecarBench,
    Stream,
    latencies,
    measure_writes,
    snapshot_bytes,
)

APP, DEST = "bench-app", "bench-dest"


def traffic_policy(name: str) -> mpb.TrafficPolicy:
    """A valid policy (as tests/mesh/conftest.py ``traffic()``) from bench-app to bench-dest."""
    body = {
        "name": name,
        "source": APP,
        "destination": DEST,
        "rules": [{"action": "TRAFFIC_ACTION_ALLOW"}],
    }
    return json_format.ParseDict(body, mpb.TrafficPolicy())


async def run_push(bench: SidecarBench, n: int, writes: int) -> dict[str, Any]:
    cp = bench.start_cp(f"cp-push-{n}")
    held: Connected | None = None
    try:
        async with bench.channel(cp) as chan:
            discovery = discovery_pb2_grpc.DiscoveryServiceStub(chan)
            mesh = mesh_pb2_grpc.MeshServiceStub(chan)
            await bench.register(discovery, DEST, 3, offset=0)
            ids = await bench.register(discovery, APP, n, offset=100)
            await asyncio.sleep(1.0)
            token = bench.token(APP)
            held = await bench.connect(f"push-{n}", cp, [Stream(sid, APP, token) for sid in ids])

            async def write(w: int) -> int:
                request = mpb.CreateTrafficPolicyRequest(policy=traffic_policy(f"bench-push-{w}"))
                response = await mesh.CreateTrafficPolicy(
                    request, metadata=bench.md, timeout=RPC_TIMEOUT
                )
                return int(response.revision)

            rounds = await measure_writes(bench, cp, held.clients, write, writes)
            streams = await bench.arrivals(held.clients, f"push-{n}")
    finally:
        bench.stop(held)
        bench.children.stop(cp)
        bench.check_log(cp)
    return _result(n, rounds, streams, held)


async def run_baseline(bench: SidecarBench, n: int, writes: int) -> dict[str, Any]:
    server = bench.start_push_server()
    held: Connected | None = None
    try:
        async with bench.channel(server) as chan:
            push: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = chan.unary_unary(PUSH_METHOD)
            await asyncio.sleep(0.5)
            streams_in = [Stream(f"stream-{i}", "raw", "unused") for i in range(n)]
            held = await bench.connect(f"raw-{n}", server, streams_in)

            async def write(w: int) -> int:
                version = w + 2  # 1 is the snapshot on connect
                await push(version.to_bytes(8, "big"), timeout=RPC_TIMEOUT)
                return version

            rounds = await measure_writes(bench, server, held.clients, write, writes)
            streams = await bench.arrivals(held.clients, f"raw-{n}")
    finally:
        bench.stop(held)
        bench.children.stop(server)
    return _result(n, rounds, streams, held)


def _result(
    n: int, rounds: list[dict[str, Any]], streams: list[dict[str, Any]], held: Connected
) -> dict[str, Any]:
    lat = latencies(streams, rounds)
    counts = lat.pop("counts")
    server_cpu = sum(r["server_cpu_s"] for r in rounds)
    window = sum(r["window_s"] for r in rounds)
    pushes = n * len(rounds)
    return {
        "streams": n,
        "client_processes": len(held.clients),
        "writes": len(rounds),
        "open_s": held.open_s,
        "received": lat["n"],
        "expected": pushes,
        "missing_at_wait": sum(r["missing"] for r in rounds),
        # Snapshots per stream per write: exactly one expected.
        "extra_snapshots": sum(max(0, c - 1) for cs in counts for c in cs),
        "stray_snapshots": lat.pop("stray"),
        "snapshot_bytes": snapshot_bytes(streams),
        "write_ms": [r["write_ms"] for r in rounds],
        "server_cpu_s": server_cpu,
        "server_idle_cpu_per_s": held.idle,
        "server_cpu_us_per_snapshot": server_cpu / pushes * 1e6,
        "server_cpu_us_per_snapshot_idle_subtracted": max(0.0, server_cpu - held.idle * window)
        / pushes
        * 1e6,
        "client_cpu_us_per_snapshot": sum(r["client_cpu_s"] for r in rounds) / pushes * 1e6,
        "rounds": rounds,
        **held.memory,
        **lat,
    }
