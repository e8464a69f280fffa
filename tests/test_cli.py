"""The README's commands, as a user runs them: `lucid-cp serve` and `lucid-cp token`, as real
processes on loopback."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import httpx
import pytest

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.api.lucid.discovery.v1 import discovery_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lucid_cp.cli", *args]


def _wait_for(
    proc: subprocess.Popen[str], pattern: str, timeout: float = 20.0
) -> tuple[re.Match[str], str]:
    """Reads the process's stderr until a line matches; returns the match and all text read."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen += line
        match = re.search(pattern, line)
        if match:
            return match, seen
    raise AssertionError(f"{pattern!r} not printed within {timeout}s; output so far:\n{seen}")


@pytest.fixture
def served(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "LUCID_JWT_SECRET"}
    proc = subprocess.Popen(
        _cli(
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path),
        ),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        grpc_match, _ = _wait_for(proc, r"gRPC on (127\.0\.0\.1:\d+)")
        http_match, _ = _wait_for(proc, r"REST gateway on (http://127\.0\.0\.1:\d+)")
        _, text = _wait_for(proc, r"^eyJ[\w-]+\.[\w-]+\.[\w-]+$")
        token = text.strip().splitlines()[-1]
        assert "DEV ONLY" in text
        yield proc, grpc_match.group(1), http_match.group(1), token
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_serve_prints_a_working_dev_token_and_shuts_down_cleanly(served, tmp_path: Path) -> None:
    proc, target, http_base, admin_token = served
    assert (tmp_path / "dev-jwt-secret").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "state.db").exists()  # the embedded sqlite store is the default

    service_token = subprocess.run(
        _cli("token", "--subject", "api-gateway", "--role", "service", "--data-dir", str(tmp_path)),
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout.strip()

    with grpc.insecure_channel(target) as channel:
        stub = discovery_pb2_grpc.DiscoveryServiceStub(channel)
        found = stub.Discover(
            pb.DiscoverRequest(), metadata=(("authorization", f"Bearer {admin_token}"),)
        )
        assert found.total == 0

    body = {
        "serviceId": str(uuid.uuid4()),
        "serviceName": "api-gateway",
        "cluster": "api-gateway",
        "plane": "ops",
        "version": "1.0.0",
        "endpoint": {
            "host": "api-gateway.lucid.onion",
            "port": 8080,
            "protocol": "https",
            "path": "/api/v1",
        },
        "healthCheck": {"endpoint": "/health", "interval": 30, "timeout": 10},
    }
    response = httpx.post(
        f"{http_base}/api/v1/service-discovery/services",
        json=body,
        headers={"authorization": f"Bearer {service_token}"},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "registered"

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


def test_token_without_any_secret_explains_what_to_do(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LUCID_JWT_SECRET"}
    result = subprocess.run(
        _cli("token", "--subject", "x", "--data-dir", str(tmp_path / "empty")),
        check=False,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode != 0
    assert "LUCID_JWT_SECRET" in result.stderr and "Traceback" not in result.stderr


def test_generated_code_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
