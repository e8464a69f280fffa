"""The README's Python client example runs as written, against a real `lucid-cp serve` on
127.0.0.1:0. Only two things are substituted, each checked to occur exactly once: the address
(the README's 127.0.0.1:50051 becomes the bound port) and $TOKEN (set in the environment, as
the README tells the reader to). The example stops itself after the Watch snapshot."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest
from cli_proc import ROOT, cli, cli_env, wait_for

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.api.lucid.discovery.v1 import discovery_pb2_grpc

README_ADDR = '"127.0.0.1:50051"'


def python_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    [example] = [b for b in blocks if "DiscoveryServiceStub" in b]
    return example


@pytest.fixture
def served(tmp_path: Path):
    proc = subprocess.Popen(
        cli(
            *("serve", "--grpc-addr", "127.0.0.1:0", "--no-gateway", "--no-health-checks"),
            *("--data-dir", str(tmp_path)),
        ),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=cli_env(),
    )
    try:
        match, _ = wait_for(proc, r"gRPC on (127\.0\.0\.1:\d+)")
        yield match.group(1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_the_python_example_runs_as_written(served: str, tmp_path: Path) -> None:
    code = python_example()
    assert code.count(README_ADDR) == 1
    token = subprocess.run(
        cli("token", "--subject", "api-gateway", "--data-dir", str(tmp_path)),
        capture_output=True,
        text=True,
        check=True,
        env=cli_env(),
    ).stdout.strip()

    # "the instance registered above": registered and reported healthy, as the README's REST
    # example does.
    md = (("authorization", f"Bearer {token}"),)
    reg = pb.ServiceRegistration(
        service_id=str(uuid.uuid4()),
        service_name="api-gateway",
        cluster=pb.CLUSTER_API_GATEWAY,
        plane=pb.PLANE_OPS,
        version="1.0.0",
    )
    reg.endpoint.host = "api-gateway.lucid.onion"
    reg.endpoint.port = 8080
    reg.endpoint.protocol = pb.PROTOCOL_HTTPS
    reg.endpoint.path = "/api/v1"
    reg.health_check.endpoint = "/health"
    reg.health_check.interval = 30
    reg.health_check.timeout = 10
    with grpc.insecure_channel(served) as channel:
        stub = discovery_pb2_grpc.DiscoveryServiceStub(channel)
        stub.Register(pb.RegisterRequest(registration=reg), metadata=md, timeout=10)
        stub.UpdateHealth(
            pb.UpdateHealthRequest(
                service_id=reg.service_id, update=pb.HealthUpdate(status=pb.HEALTH_STATE_HEALTHY)
            ),
            metadata=md,
            timeout=10,
        )

    result = subprocess.run(
        [sys.executable, "-c", code.replace(README_ADDR, f'"{served}"')],
        capture_output=True,
        text=True,
        env=cli_env(TOKEN=token),
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f'service_id: "{reg.service_id}"' in result.stdout
    assert re.search(r"^WATCH_EVENT_TYPE_SNAPSHOT \d+$", result.stdout, re.MULTILINE)
