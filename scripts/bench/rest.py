"""REST (through the gateway) vs gRPC Resolve against one control plane, driven by h2load.

    python -m scripts.bench rest                  # c=1 and c=16, 10 s each, separate processes
    python -m scripts.bench rest --concurrency 32 --duration 20 --topology combined

One control plane (memory store, rate limits disabled) with one healthy instance. The gateway
runs in its own process (``--topology separate``, like ``lucid-cp gateway``) or in the control
plane's process and event loop (``combined``, like ``lucid-cp serve``). Both paths are driven by
h2load with the same concurrency (``-c N -m 1``: N connections, one request in flight on each;
HTTP/1.1 for REST, HTTP/2 for gRPC) and the same duration; percentiles come from h2load's
per-request log. gRPC requests are raw length-prefixed frames; one is checked with a real gRPC
client first, so a wrong payload cannot pass as a fast error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from scripts.bench.common import ROOT, grpc_frame
from scripts.bench.rest_servers import (
    RESOLVE_GRPC,
    RESOLVE_REST,
    SERVICE,
    serve_gateway,
    serve_plane,
)

# ------------------------------------------------------------------------------ driver


@dataclass
class Result:
    label: str
    rps: float
    p50_ms: float
    p99_ms: float
    ok: int
    failed: dict[str, int]  # non-200 statuses (h2load logs -1 for a request cut off at the end)


def _spawn(*args: str) -> tuple[subprocess.Popen[str], dict[str, object]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "scripts.bench.rest", *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.wait(10)
        raise SystemExit(f"server {args} failed to start (exit {process.returncode})")
    return process, json.loads(line)


def _stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def _grpc_frame() -> bytes:
    from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb

    body = pb.ResolveRequest(service_name=SERVICE).SerializeToString()
    return grpc_frame(body)


def _check_grpc_frame(port: int, token: str, frame: bytes) -> None:
    """One call with the exact bytes h2load will send must succeed."""
    import grpc

    from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(RESOLVE_GRPC)
        raw = call(frame[5:], metadata=(("authorization", f"Bearer {token}"),), timeout=5)
        reply = pb.ResolveResponse.FromString(raw)
        if reply.service_name != SERVICE:
            raise SystemExit(f"unexpected Resolve reply: {reply}")


def _check_rest(port: int, token: str) -> None:
    import httpx

    response = httpx.get(
        f"http://127.0.0.1:{port}{RESOLVE_REST}", headers={"Authorization": f"Bearer {token}"}
    )
    if response.status_code != 200:
        raise SystemExit(f"REST resolve failed: {response.status_code} {response.text}")


def _h2load(
    label: str,
    args: list[str],
    url: str,
    concurrency: int,
    duration: int,
    warmup: int,
    workdir: Path,
) -> Result:
    log = workdir / f"{label}-{concurrency}.log"
    command = [
        "h2load",
        "-c",
        str(concurrency),
        "-m",
        "1",
        "-t",
        "1",
        "-D",
        str(duration),
        "--warm-up-time",
        str(warmup),
        "--log-file",
        str(log),
        *args,
        url,
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    latencies: list[float] = []
    failed: dict[str, int] = {}
    for line in log.read_text().splitlines():
        _, status, elapsed_us = line.split("\t")[:3]
        if status == "200":
            latencies.append(int(elapsed_us) / 1000)
        else:
            failed[status] = failed.get(status, 0) + 1
    match = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    if match is None or not latencies:
        raise SystemExit(f"could not read h2load output for {label}:\n{out}")
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return Result(label, float(match.group(1)), cuts[49], cuts[98], len(latencies), failed)


def _table(concurrency: int, grpc_result: Result, rest: Result) -> str:
    rows = [
        f"concurrency {concurrency}",
        f"{'path':<6} {'req/s':>10} {'p50 ms':>9} {'p99 ms':>9} {'ok':>9}  not-200",
    ]
    for r in (grpc_result, rest):
        failed = ", ".join(f"{k}: {v}" for k, v in sorted(r.failed.items())) or "-"
        rows.append(
            f"{r.label:<6} {r.rps:>10.0f} {r.p50_ms:>9.3f} {r.p99_ms:>9.3f} {r.ok:>9}  {failed}"
        )
    rows.append(
        f"REST/gRPC throughput {rest.rps / grpc_result.rps:.2f}x; "
        f"added median latency {rest.p50_ms - grpc_result.p50_ms:+.3f} ms; "
        f"added p99 {rest.p99_ms - grpc_result.p99_ms:+.3f} ms"
    )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.bench rest", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--concurrency", default="1,16", help="comma-separated levels")
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per run")
    parser.add_argument("--topology", choices=["separate", "combined"], default="separate")
    parser.add_argument("--serve-plane", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--with-gateway", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-gateway", metavar="TARGET", help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    if ns.serve_plane:
        asyncio.run(serve_plane(ns.with_gateway))
        return 0
    if ns.serve_gateway:
        asyncio.run(serve_gateway(ns.serve_gateway))
        return 0
    if shutil.which("h2load") is None:
        raise SystemExit("h2load not found (Debian package nghttp2-client)")

    combined = ns.topology == "combined"
    plane, info = _spawn("--serve-plane", *(["--with-gateway"] if combined else []))
    processes = [plane]
    try:
        grpc_port, token = int(info["grpc_port"]), str(info["token"])  # type: ignore[call-overload]
        if combined:
            http_port = int(info["http_port"])  # type: ignore[call-overload]
        else:
            gateway, gw_info = _spawn("--serve-gateway", f"127.0.0.1:{grpc_port}")
            processes.append(gateway)
            http_port = int(gw_info["http_port"])  # type: ignore[call-overload]
        frame = _grpc_frame()
        _check_grpc_frame(grpc_port, token, frame)
        _check_rest(http_port, token)
        auth = f"authorization: Bearer {token}"
        print(
            f"Resolve, {ns.duration}s per run after {ns.warmup}s warm-up, gateway "
            f"{'in the control plane process' if combined else 'in its own process'}, "
            f"{os.cpu_count()} CPUs, h2load -m 1 -t 1"
        )
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            (workdir / "frame.bin").write_bytes(frame)
            for level in (int(c) for c in ns.concurrency.split(",")):
                grpc_result = _h2load(
                    "gRPC",
                    [
                        "-H",
                        "content-type: application/grpc",
                        "-H",
                        "te: trailers",
                        "-H",
                        auth,
                        "-d",
                        str(workdir / "frame.bin"),
                    ],
                    f"http://127.0.0.1:{grpc_port}{RESOLVE_GRPC}",
                    level,
                    ns.duration,
                    ns.warmup,
                    workdir,
                )
                rest = _h2load(
                    "REST",
                    ["--h1", "-H", auth],
                    f"http://127.0.0.1:{http_port}{RESOLVE_REST}",
                    level,
                    ns.duration,
                    ns.warmup,
                    workdir,
                )
                print()
                print(_table(level, grpc_result, rest))
    finally:
        for process in reversed(processes):
            _stop(process)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
