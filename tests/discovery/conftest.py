"""Fixtures for discovery tests: a real control plane on 127.0.0.1:0 and a real gRPC channel."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.api.lucid.discovery.v1 import discovery_pb2_grpc
from lucid_cp.app import ControlPlane, start_control_plane
from lucid_cp.auth.tokens import Role, mint_token
from lucid_cp.clock import SystemClock
from lucid_cp.config import Settings

SECRET = b"discovery-tests-secret-0123456789abcdef"
BASE_SETTINGS = Settings(store_url="memory://", grpc_addr="127.0.0.1:0", jwt_secret=SECRET)


def token(
    subject: str = "api-gateway", role: Role = Role.SERVICE, clock: Any = None, **kw: Any
) -> str:
    return mint_token(SECRET, subject, role, clock or SystemClock(), **kw)


def auth(
    subject: str = "api-gateway", role: Role = Role.SERVICE, **kw: Any
) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token(subject, role, **kw)}"),)


ADMIN = auth("ops-admin", Role.ADMIN)
SERVICE = auth("api-gateway")


def registration(
    service_name: str = "api-gateway",
    *,
    service_id: str | None = None,
    port: int = 8080,
    version: str = "1.0.0",
    cluster: int = pb.CLUSTER_API_GATEWAY,
    plane: int = pb.PLANE_OPS,
    **fields: Any,
) -> pb.ServiceRegistration:
    reg = pb.ServiceRegistration(
        service_id=service_id or str(uuid.uuid4()),
        service_name=service_name,
        cluster=cluster,
        plane=plane,
        version=version,
        **fields,
    )
    reg.endpoint.host = f"{service_name}.lucid.onion"
    reg.endpoint.port = port
    reg.endpoint.protocol = pb.PROTOCOL_HTTPS
    reg.endpoint.path = "/api/v1"
    reg.health_check.endpoint = "/health"
    reg.health_check.interval = 30
    reg.health_check.timeout = 10
    return reg


def error_info(err: grpc.aio.AioRpcError) -> tuple[error_details_pb2.ErrorInfo, status_pb2.Status]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, f"no google.rpc.Status in {err}"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info, status
    raise AssertionError(f"no ErrorInfo in {status}")


def detail_of(status: status_pb2.Status, cls: type) -> Any:
    for detail in status.details:
        if detail.Is(cls.DESCRIPTOR):
            msg = cls()
            detail.Unpack(msg)
            return msg
    return None


@pytest.fixture
def settings() -> Settings:
    return BASE_SETTINGS


@pytest.fixture
async def control_plane(settings: Settings) -> AsyncIterator[ControlPlane]:
    plane = await start_control_plane(settings)
    try:
        yield plane
    finally:
        await plane.stop(grace=0.5)


@pytest.fixture
async def channel(control_plane: ControlPlane) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(control_plane.grpc_target) as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> discovery_pb2_grpc.DiscoveryServiceStub:
    return discovery_pb2_grpc.DiscoveryServiceStub(channel)


async def register(
    stub: discovery_pb2_grpc.DiscoveryServiceStub, reg: pb.ServiceRegistration, md: Any = None
) -> pb.RegisterResponse:
    return await stub.Register(
        pb.RegisterRequest(registration=reg), metadata=md or auth(reg.service_name)
    )


async def set_health(
    stub: discovery_pb2_grpc.DiscoveryServiceStub, service_id: str, state: int, md: Any = ADMIN
) -> pb.UpdateHealthResponse:
    return await stub.UpdateHealth(
        pb.UpdateHealthRequest(service_id=service_id, update=pb.HealthUpdate(status=state)),
        metadata=md,
    )


def with_limits(**limits: Any) -> Settings:
    return replace(BASE_SETTINGS, rate_limits=limits)
