"""What the discovery benchmarks share: method paths, a valid registration, and ``Bench``, the
state of one run (plan, token, child processes, results) with the helpers every benchmark uses.
"""

from __future__ import annotations

import os
import secrets
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.api.lucid.discovery.v1 import discovery_pb2_grpc
from lucid_cp.auth.tokens import Role, mint_token
from lucid_cp.clock import SystemClock
from lucid_cp.config import Settings
from scripts.bench.children import Child, Children
from scripts.bench.common import CHANNEL_OPTIONS, LOOPBACK
from scripts.bench.discovery_plan import Plan
from scripts.bench.load import LoadResult, run_load

_SERVICE = pb.DESCRIPTOR.services_by_name["DiscoveryService"]
RESOLVE_METHOD = f"/{_SERVICE.full_name}/{_SERVICE.methods_by_name['Resolve'].name}"
WATCH_METHOD = f"/{_SERVICE.full_name}/{_SERVICE.methods_by_name['Watch'].name}"
ECHO_METHOD = "/bench.Echo/Echo"
SECRET_ENV = "LUCID_BENCH_JWT_SECRET"
TOKEN_ENV = "LUCID_BENCH_TOKEN"
RPC_TIMEOUT = 15.0
# The child roles (control plane, echo, watchers) are this entry point with ``--role``.
ROLE_ARGV = [sys.executable, "-m", "scripts.bench.discovery", "--role"]


def server_options() -> list[tuple[str, Any]]:
    """The options start_control_plane gives its server, so the echo server matches them."""
    limit = Settings().max_message_bytes
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.so_reuseport", 0),
    ]


def registration(service_name: str, n: int, *, ttl: int = 3600) -> pb.RegisterRequest:
    """A valid registration; every field has the same length whatever n, so responses built
    from it (Resolve) have a constant size."""
    reg = pb.ServiceRegistration(
        service_id=str(uuid.uuid4()),
        service_name=service_name,
        cluster=pb.CLUSTER_API_GATEWAY,
        plane=pb.PLANE_OPS,
        version="1.0.0",
        instance_id=f"inst-{n:06d}",
        ttl=ttl,
    )
    reg.endpoint.host = f"10.{100 + n // 10_000 % 100}.{100 + n // 100 % 100}.{100 + n % 100}"
    reg.endpoint.port = 8080
    reg.endpoint.protocol = pb.PROTOCOL_GRPC
    reg.health_check.endpoint = "/health"
    reg.health_check.interval = 30
    reg.health_check.timeout = 5
    reg.metadata.update({"description": "benchmark instance", "tags": ["bench"]})
    return pb.RegisterRequest(registration=reg)


class Bench:
    """One run: its plan, an admin token, its child processes, and the results by benchmark."""

    def __init__(
        self,
        plan: Plan,
        workdir: Path,
        children: Children,
        profile_dir: Path | None,
        health_checks: bool = False,
    ):
        self.plan = plan
        self.workdir = workdir
        self.children = children
        self.profile_dir = profile_dir
        self.health_checks = health_checks
        self.secret = secrets.token_bytes(32)
        self.token = mint_token(self.secret, "bench-admin", Role.ADMIN, SystemClock(), ttl=3600)
        self.md = (("authorization", f"Bearer {self.token}"),)
        self.results: dict[str, Any] = {}

    # -- children ----------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        return {**os.environ, SECRET_ENV: self.secret.hex(), TOKEN_ENV: self.token}

    def start_cp(self, name: str, store_url: str) -> Child:
        argv = [*ROLE_ARGV, "cp", "--store", store_url]
        if self.profile_dir is not None:
            argv += ["--profile-out", str(self.profile_dir / f"{name}.prof")]
        if self.health_checks:
            argv.append("--health-checks")
        return self.children.start(name, argv, env=self.env())

    def start_echo(self) -> Child:
        return self.children.start("echo", [*ROLE_ARGV, "echo"], env=self.env())

    @staticmethod
    def target(child: Child) -> str:
        return f"{LOOPBACK}:{child.info['port']}"

    def channel(self, child: Child) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.target(child), options=CHANNEL_OPTIONS)

    # -- seeding -----------------------------------------------------------------------------

    async def register_many(
        self,
        stub: discovery_pb2_grpc.DiscoveryServiceStub,
        service_of: Callable[[int], str],
        n: int,
        *,
        offset: int,
        concurrency: int,
        budget_s: float,
    ) -> tuple[LoadResult, list[str]]:
        ids: list[str] = []

        async def op(i: int) -> None:
            request = registration(service_of(i), i)
            await stub.Register(request, metadata=self.md, timeout=RPC_TIMEOUT)
            ids.append(request.registration.service_id)

        result = await run_load(n, concurrency, op, budget_s=budget_s, offset=offset)
        return result, ids

    async def make_healthy(
        self, stub: discovery_pb2_grpc.DiscoveryServiceStub, ids: list[str]
    ) -> None:
        for service_id in ids:
            await stub.UpdateHealth(
                pb.UpdateHealthRequest(
                    service_id=service_id, update=pb.HealthUpdate(status=pb.HEALTH_STATE_HEALTHY)
                ),
                metadata=self.md,
                timeout=RPC_TIMEOUT,
            )
