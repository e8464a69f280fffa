"""(d) Resolve latency and control-plane RSS at 1k and 100k registered instances."""

from __future__ import annotations

import asyncio
from typing import Any

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.api.lucid.discovery.v1 import discovery_pb2_grpc
from scripts.bench.common import latency_summary, median, rss_kib
from scripts.bench.discovery_common import RPC_TIMEOUT, Bench, registration
from scripts.bench.discovery_plan import Plan
from scripts.bench.load import LoadResult, run_load
from scripts.bench.report import Row, fmt, fmt_ratio, met


async def run(bench: Bench) -> None:
    p = bench.plan
    cp = bench.start_cp("cp-scale", "memory://")
    out: dict[str, Any] = {"empty_rss_kib": rss_kib(cp.pid), "sizes": {}}
    try:
        # Several channels, as many registering sidecars would have.
        chans = [bench.channel(cp) for _ in range(4)]
        stubs = [discovery_pb2_grpc.DiscoveryServiceStub(c) for c in chans]
        try:
            stub = stubs[0]
            target_n = p.resolve_instances
            reg, ids = await bench.register_many(
                stub, lambda _i: "scale-target", target_n, offset=0, concurrency=4, budget_s=60
            )
            if len(ids) != target_n:
                raise RuntimeError(f"seeding scale-target failed: {reg.errors[:3]}")
            await bench.make_healthy(stub, ids)
            registered = target_n
            for size in p.scale_sizes:
                needed = size - registered
                result = await _register_bulk(bench, stubs, registered, needed)
                registered += result.done
                check = await stub.Discover(
                    pb.DiscoverRequest(limit=1), metadata=bench.md, timeout=60
                )
                await asyncio.sleep(1.0)  # let the server settle before reading its RSS
                rss = rss_kib(cp.pid)
                resolve = await _resolve_sequential(bench, stub)
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
        bench.children.stop(cp)
    bench.results["d_scale"] = out


async def _register_bulk(
    bench: Bench, stubs: list[discovery_pb2_grpc.DiscoveryServiceStub], offset: int, n: int
) -> LoadResult:
    p = bench.plan

    async def op(i: int) -> None:
        # 100 instances per bulk service; none of them is "scale-target".
        await stubs[i % len(stubs)].Register(
            registration(f"bulk-{i // 100:05d}", i), metadata=bench.md, timeout=RPC_TIMEOUT
        )

    return await run_load(
        n, p.scale_register_concurrency, op, budget_s=p.scale_register_budget_s, offset=offset
    )


async def _resolve_sequential(
    bench: Bench, stub: discovery_pb2_grpc.DiscoveryServiceStub
) -> dict[str, Any]:
    """Sequential Resolve calls in batches; p50/p99 are the medians over batches (a burst
    from a noisy neighbour spoils one batch, not the figure), pooled figures are kept too."""
    p = bench.plan
    request = pb.ResolveRequest(service_name="scale-target")

    async def op(_i: int) -> None:
        response = await stub.Resolve(request, metadata=bench.md, timeout=RPC_TIMEOUT)
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


def report(results: dict[str, Any], plan: Plan, rows: list[Row], notes: list[str]) -> None:
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
