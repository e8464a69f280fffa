"""(a) Resolve throughput and latency vs a bare grpc.aio echo server (same process model, same
server options), both driven by h2load with the same request count and concurrency."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import grpc

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.api.lucid.discovery.v1 import discovery_pb2_grpc
from scripts.bench.children import Child
from scripts.bench.common import cpu_seconds, grpc_frame, median, median_run
from scripts.bench.discovery_common import ECHO_METHOD, RESOLVE_METHOD, RPC_TIMEOUT, Bench
from scripts.bench.discovery_plan import Plan
from scripts.bench.h2load import run_h2load
from scripts.bench.report import Row, fmt, fmt_ratio, met


async def run(bench: Bench) -> None:
    """Rounds of (control plane, then echo), one server alive at a time; the medians over
    rounds are compared, so a noisy neighbour hits both sides alike."""
    rounds: list[dict[str, Any]] = []
    sizes: set[int] = set()
    for number in range(bench.plan.h2load_repeats):
        cp_run, sizes, sample = await _throughput_cp(bench, number)
        echo_run = await _throughput_echo(bench, number, sample)
        rounds.append({"resolve": cp_run, "echo": echo_run})
    bench.results["a_throughput"] = {
        "rounds": rounds,
        "resolve": median_run([r["resolve"] for r in rounds]),
        "echo": median_run([r["echo"] for r in rounds]),
        "resolve_response_bytes": sorted(sizes),
    }


def _h2load_headers(bench: Bench) -> list[str]:
    return [
        "content-type: application/grpc",
        "te: trailers",
        f"authorization: Bearer {bench.token}",
    ]


async def _throughput_cp(bench: Bench, number: int) -> tuple[dict[str, Any], set[int], bytes]:
    p = bench.plan
    payload = pb.ResolveRequest(service_name="bench-resolve").SerializeToString()
    cp = bench.start_cp(f"cp-throughput-{number}", "memory://")
    try:
        async with bench.channel(cp) as chan:
            stub = discovery_pb2_grpc.DiscoveryServiceStub(chan)
            reg, ids = await bench.register_many(
                stub,
                lambda _i: "bench-resolve",
                p.resolve_instances,
                offset=0,
                concurrency=4,
                budget_s=60,
            )
            if reg.errors or len(ids) != p.resolve_instances:
                raise RuntimeError(f"seeding Resolve instances failed: {reg.errors[:3]}")
            await bench.make_healthy(stub, ids)
            # The exact bytes h2load will send, through a Python client first: must be OK.
            raw_resolve = chan.unary_unary(RESOLVE_METHOD)
            sizes: set[int] = set()
            sample = b""
            for _ in range(2 * p.resolve_instances):
                sample = await raw_resolve(payload, metadata=bench.md, timeout=RPC_TIMEOUT)
                decoded = pb.ResolveResponse.FromString(sample)
                if decoded.service_name != "bench-resolve" or not decoded.host:
                    raise RuntimeError(f"unexpected Resolve answer: {decoded}")
                sizes.add(len(sample))
            run = await _h2load_measure(
                bench,
                f"resolve-{number}",
                cp,
                RESOLVE_METHOD,
                payload,
                sizes,
                _Sampler(stub, bench.md),
            )
    finally:
        bench.children.stop(cp)
    return run, sizes, sample


async def _throughput_echo(bench: Bench, number: int, sample: bytes) -> dict[str, Any]:
    # Echo a payload the size of a Resolve response, so both move the same bytes back.
    echo = bench.start_echo()
    try:
        async with bench.channel(echo) as chan:
            answer = await chan.unary_unary(ECHO_METHOD)(sample, timeout=RPC_TIMEOUT)
            if answer != sample:
                raise RuntimeError("the echo server did not echo")
        return await _h2load_measure(
            bench, f"echo-{number}", echo, ECHO_METHOD, sample, {len(sample)}, None
        )
    finally:
        bench.children.stop(echo)


async def _h2load_measure(
    bench: Bench,
    name: str,
    child: Child,
    method: str,
    payload: bytes,
    response_sizes: set[int],
    sampler: _Sampler | None,
) -> dict[str, Any]:
    """Warm-up, then one measured h2load run (with a gRPC-status sampler when given)."""
    p = bench.plan
    headers = _h2load_headers(bench)
    body = bench.workdir / f"{name}.body"
    body.write_bytes(grpc_frame(payload))
    url = f"http://{bench.target(child)}{method}"
    await run_h2load(
        url,
        body,
        headers,
        requests=p.h2load_warmup,
        clients=p.h2load_clients,
        streams=p.h2load_streams,
        log_file=None,
        timeout=120,
    )
    cpu_before = cpu_seconds(child.pid)
    sampling = asyncio.create_task(sampler.run()) if sampler is not None else None
    try:
        result = await run_h2load(
            url,
            body,
            headers,
            requests=p.h2load_requests,
            clients=p.h2load_clients,
            streams=p.h2load_streams,
            log_file=bench.workdir / f"{name}.h2load.tsv",
            timeout=300,
        )
    finally:
        if sampler is not None and sampling is not None:
            sampler.stop = True
            await sampling
    cpu = cpu_seconds(child.pid) - cpu_before
    summary = result.summary()
    # h2load counts HTTP 200 as success even when grpc-status != 0. A gRPC error has no
    # DATA frame, so the DATA byte count proves every response carried a message.
    low = result.succeeded * (5 + min(response_sizes))
    high = result.succeeded * (5 + max(response_sizes))
    summary["data_bytes_expected"] = [low, high]
    summary["verified"] = (
        result.succeeded == p.h2load_requests
        and result.status_2xx == p.h2load_requests
        and low <= result.data_bytes <= high
        and (sampler is None or (sampler.errors == 0 and sampler.ok > 0))
    )
    if sampler is not None:
        summary["sampler_ok"] = sampler.ok
        summary["sampler_errors"] = sampler.errors
    summary["server_cpu_s"] = cpu
    summary["server_cpu_util"] = cpu / result.seconds if result.seconds else None
    summary["server_cpu_us_per_req"] = cpu / result.succeeded * 1e6 if result.succeeded else None
    summary["loadavg_1m"] = os.getloadavg()[0]
    return summary


class _Sampler:
    """Calls Resolve through a real gRPC client ~20 times a second while h2load runs, and
    counts non-OK statuses (h2load itself only sees HTTP 200)."""

    def __init__(self, stub: discovery_pb2_grpc.DiscoveryServiceStub, md: Any) -> None:
        self.stub = stub
        self.md = md
        self.ok = 0
        self.errors = 0
        self.stop = False

    async def run(self) -> None:
        request = pb.ResolveRequest(service_name="bench-resolve")
        for _ in range(20 * 600):  # bounded: at most ~10 minutes
            if self.stop:
                return
            try:
                response = await self.stub.Resolve(request, metadata=self.md, timeout=RPC_TIMEOUT)
                if response.host and response.service_name == "bench-resolve":
                    self.ok += 1
                else:
                    self.errors += 1
            except grpc.aio.AioRpcError:
                self.errors += 1
            await asyncio.sleep(0.05)


def report(results: dict[str, Any], plan: Plan, rows: list[Row], notes: list[str]) -> None:
    a = results.get("a_throughput")
    if a:
        ours, base = a["resolve"], a["echo"]
        text, ratio = fmt_ratio(ours["req_per_s"], base["req_per_s"])
        verified = all(r[k]["verified"] for r in a["rounds"] for k in ("resolve", "echo"))
        rows.append(
            Row(
                "(a) Resolve throughput (req/s)",
                fmt(ours["req_per_s"], digits=0),
                fmt(base["req_per_s"], digits=0) + " (echo)",
                text,
                ">= 0.8x",
                met(ratio >= 0.8 if ratio is not None and verified else None),
            )
        )
        for key, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
            text, _ = fmt_ratio(ours[key], base[key])
            rows.append(
                Row(
                    f"(a) Resolve latency {label} under load (ms)",
                    fmt(ours[key], digits=2),
                    fmt(base[key], digits=2) + " (echo)",
                    text,
                    "info",
                    "-",
                )
            )
        cpu_ours = median([r["resolve"]["server_cpu_us_per_req"] for r in a["rounds"]])
        cpu_base = median([r["echo"]["server_cpu_us_per_req"] for r in a["rounds"]])
        text, _ = fmt_ratio(cpu_ours, cpu_base)
        rows.append(
            Row(
                "(a) server CPU per request (us, lower is better)",
                fmt(cpu_ours, digits=0),
                fmt(cpu_base, digits=0) + " (echo)",
                text,
                "info",
                "-",
            )
        )
        notes.append(
            f"(a) load generator: h2load (nghttp2), -n {plan.h2load_requests} -c {plan.h2load_clients} "
            f"-m {plan.h2load_streams} -t 1 ({plan.h2load_clients * plan.h2load_streams} in flight) "
            f"after a {plan.h2load_warmup}-request warm-up, against one server process at a time; "
            f"{plan.h2load_repeats} round(s) of (control plane, echo), each server started afresh; "
            "throughput and latency are from the median-throughput run of each side, latency "
            "percentiles from h2load's --log-file, CPU/request is the median over rounds "
            "(server CPU-seconds from /proc / requests). Both servers have identical grpc.aio "
            f"options; the echo handler returns its {a['resolve_response_bytes']}-byte payload (the "
            "size of a Resolve response) untouched; the control plane (memory:// store, rate limits "
            f"off, JWT auth on) holds {plan.resolve_instances} healthy instances; round-robin resolve."
        )
        notes.append(
            "(a) per round req/s (resolve / echo = ratio): "
            + "; ".join(
                f"{r['resolve']['req_per_s']:,.0f} / {r['echo']['req_per_s']:,.0f} = "
                f"{r['resolve']['req_per_s'] / r['echo']['req_per_s']:.2f}x "
                f"(server CPU util {r['resolve']['server_cpu_util']:.2f} / {r['echo']['server_cpu_util']:.2f}, "
                f"load avg {r['resolve']['loadavg_1m']:.1f})"
                for r in a["rounds"]
            )
        )
        notes.append(
            "(a) verification: the exact request bytes were first sent through a Python gRPC client "
            "and decoded OK; for every h2load run, DATA bytes received must equal "
            "succeeded x (5 + response size) (a gRPC error is trailers-only, no DATA), and a Python "
            "client called Resolve ~20 times a second during each control-plane run checking the "
            f"status: all runs verified = {verified} ("
            + "; ".join(
                f"resolve data {r['resolve']['data_bytes']:,} B vs expected "
                f"{r['resolve']['data_bytes_expected'][0]:,}, sampler ok {r['resolve']['sampler_ok']} "
                f"errors {r['resolve']['sampler_errors']}; echo data {r['echo']['data_bytes']:,} B vs "
                f"{r['echo']['data_bytes_expected'][0]:,}"
                for r in a["rounds"]
            )
            + ")."
        )
