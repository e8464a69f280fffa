"""Shared plumbing for every benchmark: loopback constants, latency statistics, /proc readings
and gRPC framing. Nothing here knows about Lucid's services; the benchmark modules do.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
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


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """User + system CPU time per thread name (threads of one name summed; the main thread is
    ``main``), e.g. the event loop's thread vs gRPC's and the store's worker threads."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name, rest = task.joinpath("stat").read_text().split("(", 1)[1].rsplit(")", 1)
        except OSError:
            continue  # the thread ended
        name = "main" if task.name == str(pid) else name
        fields = rest.split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return out


def grpc_frame(message: bytes) -> bytes:
    """A length-prefixed gRPC message: 0 (uncompressed), 4-byte big-endian length, payload."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def median(values: list[float | None]) -> float | None:
    present = sorted(v for v in values if v is not None)
    return present[len(present) // 2] if present else None


def median_run(runs: list[dict[str, Any]], key: str = "req_per_s") -> dict[str, Any]:
    """The run with the median throughput."""
    return sorted(runs, key=lambda r: r[key])[len(runs) // 2]
