"""Runs h2load (nghttp2) and parses its summary and per-request log."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.bench.common import latency_summary


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
