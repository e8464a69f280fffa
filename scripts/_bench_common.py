"""Shared plumbing for the scripts/bench_*.py benchmarks: child processes that announce their
port, latency statistics, gRPC framing, an h2load runner and the Markdown report.

Nothing here knows about Lucid's services; the benchmark scripts do.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import selectors
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

LOOPBACK = "127.0.0.1"
READY_PREFIX = "READY "
# Every channel the benchmarks open goes straight to loopback, whatever the environment says.
CHANNEL_OPTIONS: list[tuple[str, Any]] = [("grpc.enable_http_proxy", 0)]


# -- statistics ------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (p in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p99/max/mean in milliseconds, plus the sample count."""
    values = sorted(seconds)
    if not values:
        return {
            "n": 0,
            "p50_ms": math.nan,
            "p99_ms": math.nan,
            "max_ms": math.nan,
            "mean_ms": math.nan,
        }
    return {
        "n": len(values),
        "p50_ms": percentile(values, 50) * 1e3,
        "p99_ms": percentile(values, 99) * 1e3,
        "max_ms": values[-1] * 1e3,
        "mean_ms": sum(values) / len(values) * 1e3,
    }


def monotonic_ns() -> int:
    """CLOCK_MONOTONIC is system-wide on Linux: readings from different processes compare."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def rss_kib(pid: int) -> int:
    """VmRSS of a process, in KiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def grpc_frame(message: bytes) -> bytes:
    """A length-prefixed gRPC message: 0 (uncompressed), 4-byte big-endian length, payload."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


# -- child processes -------------------------------------------------------------------------


@dataclass
class Child:
    """A child process that prints ``READY {json}`` on stdout once it serves, and exits when
    its stdin closes (so it also dies with us if we are killed)."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()

    def stop(self, timeout: float = 15.0) -> int | None:
        """Closes stdin (asks it to exit), then SIGTERM, then SIGKILL. Returns the exit code."""
        if self.proc.poll() is None:
            try:
                if self.proc.stdin is not None:
                    self.proc.stdin.close()
            except OSError:
                pass
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
            try:
                return self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


class Children:
    """Owns every child process of a run; ``close()`` (also on signals) stops them all."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._children: list[Child] = []
        self._cleanups: list[Any] = []

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        ready_timeout: float = 60.0,
        env: dict[str, str] | None = None,
    ) -> Child:
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env
            )
        child = Child(name, proc, log_path)
        self._children.append(child)
        child.info = self._await_ready(child, ready_timeout)
        return child

    @staticmethod
    def _await_ready(child: Child, timeout: float) -> dict[str, Any]:
        assert child.proc.stdout is not None
        deadline = time.monotonic() + timeout
        buffer = b""
        with selectors.DefaultSelector() as sel:
            sel.register(child.proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not sel.select(timeout=min(0.2, max(0.0, deadline - time.monotonic()))):
                    if child.proc.poll() is not None:
                        break
                    continue
                chunk = os.read(child.proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                buffer += chunk
                for line in buffer.decode(errors="replace").splitlines():
                    if line.startswith(READY_PREFIX):
                        return dict(json.loads(line[len(READY_PREFIX) :]))
        child.stop(5)
        raise RuntimeError(f"{child.name} did not become ready:\n{child.log_tail()}")

    def on_close(self, cleanup: Any) -> None:
        """Registers a zero-argument callable run by ``close()`` (e.g. an etcd's cleanup)."""
        self._cleanups.append(cleanup)

    def stop(self, child: Child) -> int | None:
        if child in self._children:
            self._children.remove(child)
        return child.stop()

    def close(self) -> None:
        while self._children:
            self._children.pop().stop(timeout=5)
        while self._cleanups:
            try:
                self._cleanups.pop()()
            except Exception as exc:
                print(f"cleanup failed: {exc}", file=sys.stderr)


def announce_ready(**info: Any) -> None:
    """Called by a child once it serves."""
    sys.stdout.write(READY_PREFIX + json.dumps(info) + "\n")
    sys.stdout.flush()


async def wait_for_stdin_eof() -> None:
    """In a child: returns when the parent closes our stdin (or dies)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.readline():
        pass


# -- echo server, load loops ---------------------------------------------------------------


class _EchoHandler(grpc.GenericRpcHandler):
    """Answers every unary method with the request bytes, untouched (no (de)serialization)."""

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return request

        return grpc.unary_unary_rpc_method_handler(echo)


async def serve_echo(options: list[tuple[str, Any]]) -> None:
    """A child role: a bare grpc.aio server echoing every unary call, until stdin closes."""
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((_EchoHandler(),))
    port = server.add_insecure_port(f"{LOOPBACK}:0")
    await server.start()
    announce_ready(port=port, pid=os.getpid())
    await wait_for_stdin_eof()
    await server.stop(0)


@dataclass
class LoadResult:
    latencies: list[float]
    seconds: float
    errors: list[str]
    done: int

    @property
    def per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "done": self.done,
            "seconds": self.seconds,
            "per_s": self.per_second,
            "errors": len(self.errors),
            "first_errors": self.errors[:3],
            **latency_summary(self.latencies),
        }


async def run_load(
    n: int,
    concurrency: int,
    op: Callable[[int], Awaitable[Any]],
    *,
    budget_s: float,
    offset: int = 0,
) -> LoadResult:
    """Runs op(offset)..op(offset+n-1) on ``concurrency`` tasks; stops early after budget_s."""
    indices = iter(range(offset, offset + n))
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + budget_s

    async def worker() -> None:
        for i in indices:
            if time.monotonic() > deadline:
                return
            t = time.perf_counter()
            try:
                await op(i)
            except Exception as exc:
                detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
                errors.append(f"{type(exc).__name__}: {detail}")
                continue
            latencies.append(time.perf_counter() - t)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return LoadResult(latencies, time.perf_counter() - started, errors, len(latencies))


def median(values: list[float | None]) -> float | None:
    present = sorted(v for v in values if v is not None)
    return present[len(present) // 2] if present else None


def median_run(runs: list[dict[str, Any]], key: str = "req_per_s") -> dict[str, Any]:
    """The run with the median throughput."""
    return sorted(runs, key=lambda r: r[key])[len(runs) // 2]


# -- h2load ----------------------------------------------------------------------------------


@dataclass
class H2loadResult:
    requests: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    status_2xx: int
    seconds: float
    req_per_s: float
    data_bytes: int
    latencies_s: list[float]
    raw_output: str

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "errored": self.errored,
            "timeout": self.timeout,
            "status_2xx": self.status_2xx,
            "seconds": self.seconds,
            "req_per_s": self.req_per_s,
            "data_bytes": self.data_bytes,
            **latency_summary(self.latencies_s),
        }


_FINISHED = re.compile(r"finished in ([\d.]+)(ms|s|us), ([\d.]+) req/s")
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)
_STATUS = re.compile(r"status codes: (\d+) 2xx")
_TRAFFIC_DATA = re.compile(r"traffic: .*?, .*?\((\d+)\) headers .*?, .*?\((\d+)\) data")
_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


def parse_h2load(output: str, log_file: Path | None) -> H2loadResult:
    finished = _FINISHED.search(output)
    requests = _REQUESTS.search(output)
    status = _STATUS.search(output)
    traffic = _TRAFFIC_DATA.search(output)
    if not (finished and requests and status and traffic):
        raise RuntimeError(f"cannot parse h2load output:\n{output}")
    latencies: list[float] = []
    if log_file is not None and log_file.exists():
        for line in log_file.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 3 and parts[1].strip() == "200":
                latencies.append(int(parts[2]) / 1e6)
    return H2loadResult(
        requests=int(requests.group(3)),
        succeeded=int(requests.group(4)),
        failed=int(requests.group(5)),
        errored=int(requests.group(6)),
        timeout=int(requests.group(7)),
        status_2xx=int(status.group(1)),
        seconds=float(finished.group(1)) * _UNITS[finished.group(2)],
        req_per_s=float(finished.group(3)),
        data_bytes=int(traffic.group(2)),
        latencies_s=latencies,
        raw_output=output,
    )


async def run_h2load(
    url: str,
    body_file: Path,
    headers: Sequence[str],
    *,
    requests: int,
    clients: int,
    streams: int,
    log_file: Path | None,
    timeout: float,
) -> H2loadResult:
    argv = [
        "h2load",
        "-n",
        str(requests),
        "-c",
        str(clients),
        "-m",
        str(streams),
        "-t",
        "1",
        "-d",
        str(body_file),
        "-T",
        "10",
    ]
    for header in headers:
        argv += ["-H", header]
    if log_file is not None:
        argv += ["--log-file", str(log_file)]
    argv.append(url)
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"h2load exited with {proc.returncode}:\n{text}")
    return parse_h2load(text, log_file)


# -- report ----------------------------------------------------------------------------------


@dataclass
class Row:
    benchmark: str
    ours: str
    baseline: str
    ratio: str
    target: str
    met: str


def fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}{unit}"


def fmt_ratio(ours: float | None, baseline: float | None) -> tuple[str, float | None]:
    if not ours or not baseline or math.isnan(ours) or math.isnan(baseline):
        return "n/a", None
    ratio = ours / baseline
    return f"{ratio:.3g}x", ratio


def markdown_table(rows: Sequence[Row], notes: Sequence[str]) -> str:
    lines = [
        "| benchmark | ours | baseline | ratio | target | met? |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.benchmark} | {r.ours} | {r.baseline} | {r.ratio} | {r.target} | {r.met} |"
        )
    if notes:
        lines.append("")
        lines.append("Notes:")
        lines.extend(f"- {n}" for n in notes)
    return "\n".join(lines)
