"""Fixtures for mesh control tests: a real control plane on 127.0.0.1:0 (memory store, active
health checks off), gRPC stubs for mesh and discovery, and request builders."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as dpb
from lucid_cp.api.lucid.discovery.v1 import discovery_pb2_grpc
from lucid_cp.api.lucid.mesh.v1 import mesh_pb2 as pb
from lucid_cp.api.lucid.mesh.v1 import mesh_pb2_grpc
from lucid_cp.app import ControlPlane, start_control_plane
from lucid_cp.config import Settings
from lucid_cp.discovery.settings import DiscoverySettings
from tests.discovery.conftest import (
    ADMIN,
    SECRET,
    SERVICE,
    auth,
    detail_of,
    error_info,
    registration,
)

__all__ = ["ADMIN", "SERVICE", "error_info"]

SETTINGS = Settings(
    store_url="memory://",
    grpc_addr="127.0.0.1:0",
    jwt_secret=SECRET,
    sections=(DiscoverySettings(health_checks_enabled=False),),
)
CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


class NoServices:
    """Discovery as the mesh core sees it, with nothing registered (for cores built by hand)."""

    def of_service(self, service_name: str) -> dict[str, dpb.ServiceInstance]:
        return {}

    def ordered(self, service_name: str = "") -> Iterator[dpb.ServiceInstance]:
        return iter(())


def traffic(**over: Any) -> pb.TrafficPolicy:
    body: dict[str, Any] = {
        "name": "gw-to-chain",
        "source": "api-gateway",
        "destination": "blockchain-core",
        "rules": [{"action": "TRAFFIC_ACTION_ALLOW"}],
    }
    return json_format.ParseDict(body | over, pb.TrafficPolicy())


def security(**over: Any) -> pb.SecurityPolicy:
    body: dict[str, Any] = {
        "name": "gw-allow",
        "source": "api-gateway",
        "destination": "blockchain-core",
        "rules": [{"action": "SECURITY_ACTION_ALLOW"}],
    }
    return json_format.ParseDict(body | over, pb.SecurityPolicy())


def breaker(**over: Any) -> pb.CircuitBreakerConfig:
    body: dict[str, Any] = {"failureThreshold": 5, "recoveryTimeout": 30}
    return json_format.ParseDict(body | over, pb.CircuitBreakerConfig())


@dataclass
class Mesh:
    plane: ControlPlane
    mesh: mesh_pb2_grpc.MeshServiceStub
    discovery: discovery_pb2_grpc.DiscoveryServiceStub

    async def register(self, name: str, **kw: Any) -> dpb.RegisterResponse:
        return await self.discovery.Register(
            dpb.RegisterRequest(registration=registration(name, **kw)), metadata=auth(name)
        )


async def open_mesh(settings: Settings = SETTINGS) -> AsyncIterator[Mesh]:
    plane = await start_control_plane(settings)
    try:
        async with grpc.aio.insecure_channel(plane.grpc_target) as channel:
            yield Mesh(
                plane,
                mesh_pb2_grpc.MeshServiceStub(channel),
                discovery_pb2_grpc.DiscoveryServiceStub(channel),
            )
    finally:
        await plane.stop(grace=0.5)


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    async for m in open_mesh():
        yield m


async def rpc_error(call: Any) -> tuple[grpc.StatusCode, str, list[tuple[str, str]]]:
    """(code, LUCID_ERR reason, field violations) of a call that must fail."""
    try:
        await call
    except grpc.aio.AioRpcError as err:
        info, status = error_info(err)
        bad = detail_of(status, error_details_pb2.BadRequest)
        violations = [(v.field, v.description) for v in bad.field_violations] if bad else []
        return err.code(), info.reason, violations
    raise AssertionError("the call succeeded")
