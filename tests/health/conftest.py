"""Fixtures for the health-check tests: check targets on 127.0.0.1 and instance builders."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb

from .targets import GrpcTarget, HttpTarget

# Health tests run a ScaledClock this many times faster than real time: interval 5 s (the proto
# minimum) -> 200 ms rounds; timeout 4 s -> 160 ms per attempt, slow above 2 s (80 ms real).
SPEED = 25


def registration(
    port: int,
    *,
    path: str = "/health",
    protocol: int = pb.PROTOCOL_HTTP,
    host: str = "127.0.0.1",
    name: str = "session-manager",
    retries: int = 1,
    success_threshold: int = 1,
    failure_threshold: int = 3,
    timeout: int = 4,
    **health_check: Any,
) -> pb.ServiceRegistration:
    reg = pb.ServiceRegistration(
        service_id=str(uuid.uuid4()),
        service_name=name,
        cluster=pb.CLUSTER_SESSION_MANAGEMENT,
        plane=pb.PLANE_OPS,
        version="1.0.0",
        ttl=300,
        weight=100,
    )
    reg.endpoint.host = host
    reg.endpoint.port = port
    reg.endpoint.protocol = protocol  # type: ignore[assignment]
    reg.health_check.MergeFrom(
        pb.HealthCheckConfig(
            endpoint=path,
            interval=5,
            timeout=timeout,
            retries=retries,
            success_threshold=success_threshold,
            failure_threshold=failure_threshold,
            **health_check,
        )
    )
    return reg


def instance_of(reg: pb.ServiceRegistration) -> pb.ServiceInstance:
    instance = pb.ServiceInstance(service_id=reg.service_id, service_name=reg.service_name)
    instance.endpoint.CopyFrom(reg.endpoint)
    instance.health_check.CopyFrom(reg.health_check)
    return instance


@pytest.fixture
async def http_target() -> AsyncIterator[HttpTarget]:
    target = await HttpTarget().start()
    try:
        yield target
    finally:
        await target.stop()


@pytest.fixture
async def grpc_target() -> AsyncIterator[GrpcTarget]:
    target = await GrpcTarget().start()
    try:
        yield target
    finally:
        await target.stop()
