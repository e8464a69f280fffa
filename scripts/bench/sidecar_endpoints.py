"""(2) An endpoint change that affects 10 of 1000 connected sidecars.

10 sidecars of "bench-caller" are configured (ConfigureSidecar) with routing.defaultRoute
"bench-target"; the other 990, of "bench-app", route to "bench-dest". Then "bench-target"'s
usable endpoints change, alternately: a registered, not yet healthy spare instance is marked
healthy (an endpoint appears), then deregistered (it disappears). Each change is one write.
Measured: arrival at the 10 callers (from just before the write call), snapshots received by
the other 990 (must be none), control-plane CPU per change.
"""

from __future__ import annotations

import asyncio
from typing import Any

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as dpb
from lucid_cp.api.lucid.discovery.v1 import discovery_pb2_grpc
from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2 as pb
from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2_grpc
from scripts.bench.load import run_load
from scripts.bench.sidecar_common import (
    RPC_TIMEOUT,
    Connected,
    SidecarBench,
    Stream,
    latencies,
    measure_writes,
)
from scripts.bench.sidecar_push import APP, DEST

CALLER, TARGET = "bench-caller", "bench-target"
LATE_S = 1.0  # after the last change: time for any stray snapshot to the others to arrive


async def run_endpoints(bench: SidecarBench, n: int, callers: int, changes: int) -> dict[str, Any]:
    cp = bench.start_cp("cp-endpoints")
    held: Connected | None = None
    try:
        async with bench.channel(cp) as chan:
            discovery = discovery_pb2_grpc.DiscoveryServiceStub(chan)
            sidecar = sidecar_pb2_grpc.SidecarServiceStub(chan)
            await bench.register(discovery, TARGET, 3, offset=0)
            await bench.register(discovery, DEST, 3, offset=10)
            spares = await bench.register(
                discovery, TARGET, (changes + 1) // 2, offset=20, healthy=False
            )
            caller_ids = await bench.register(discovery, CALLER, callers, offset=100)
            app_ids = await bench.register(discovery, APP, n - callers, offset=200)
            routes = {sid: TARGET for sid in caller_ids} | {sid: DEST for sid in app_ids}
            ordered = list(routes)

            async def configure(i: int) -> None:
                sid = ordered[i]
                cfg = pb.SidecarConfiguration(service_id=sid)
                cfg.routing.default_route = routes[sid]
                await sidecar.ConfigureSidecar(
                    pb.ConfigureSidecarRequest(configuration=cfg),
                    metadata=bench.md,
                    timeout=RPC_TIMEOUT,
                )

            done = await run_load(len(ordered), 16, configure, budget_s=120)
            if done.errors:
                raise RuntimeError(f"ConfigureSidecar failed: {done.errors[:3]}")
            caller_token, app_token = bench.token(CALLER), bench.token(APP)
            streams = [Stream(sid, CALLER, caller_token) for sid in caller_ids] + [
                Stream(sid, APP, app_token) for sid in app_ids
            ]
            held = await bench.connect("endpoints", cp, streams)

            async def change(w: int) -> int:
                spare = spares[w // 2]
                if w % 2 == 0:
                    return await bench.set_health(discovery, spare, healthy=True)
                response = await discovery.Deregister(
                    dpb.DeregisterRequest(service_id=spare), metadata=bench.md, timeout=RPC_TIMEOUT
                )
                return int(response.revision)

            rounds = await measure_writes(bench, cp, held.clients, change, changes, group=CALLER)
            await asyncio.sleep(LATE_S)
            records = await bench.arrivals(held.clients, "endpoints")
    finally:
        bench.stop(held)
        bench.children.stop(cp)
        bench.check_log(cp)

    lat = latencies(records, rounds, group=CALLER)
    counts = lat.pop("counts")
    by_group: dict[str, list[int]] = {CALLER: [], APP: []}
    for record, per_write in zip(records, counts, strict=True):
        by_group[record["group"]].append(sum(per_write))
    cpu = sum(r["server_cpu_s"] for r in rounds)
    window = sum(r["window_s"] for r in rounds)
    return {
        "streams": n,
        "callers": callers,
        "changes": len(rounds),
        "client_processes": len(held.clients),
        "open_s": held.open_s,
        "received": lat["n"],
        "expected": callers * len(rounds),
        "missing_at_wait": sum(r["missing"] for r in rounds),
        "caller_snapshots": sum(by_group[CALLER]),
        "caller_snapshots_expected": callers * len(rounds),
        "others_with_snapshots": sum(1 for c in by_group[APP] if c),
        "others_snapshots": sum(by_group[APP]),
        "stray_snapshots": lat.pop("stray"),
        "write_ms": [r["write_ms"] for r in rounds],
        "server_cpu_s": cpu,
        "server_idle_cpu_per_s": held.idle,
        "server_cpu_ms_per_change": cpu / len(rounds) * 1e3,
        "server_cpu_ms_per_change_idle_subtracted": max(0.0, cpu - held.idle * window)
        / len(rounds)
        * 1e3,
        "rounds": rounds,
        **held.memory,
        **lat,
    }
