"""Fixtures for sidecar tests: a real control plane on 127.0.0.1:0 (memory store, active health
checks off, rate limits off unless a test turns them on), gRPC stubs, request builders."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as dpb
from lucid_cp.api.lucid.discovery.v1 import discovery_pb2_grpc
from lucid_cp.api.lucid.mesh.v1 import mesh_pb2_grpc
from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2 as pb
from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2_grpc
from lucid_cp.app import ControlPlane, start_control_plane
from lucid_cp.config import Settings
from tests.discovery.conftest import ADMIN, auth, registration
from tests.mesh.conftest import SETTINGS as MESH_SETTINGS
from tests.mesh.conftest import rpc_error

__all__ = ["ADMIN", "auth", "rpc_error"]

SETTINGS = replace(MESH_SETTINGS, rate_limits_enabled=False)


def config(service_id: str, **over: Any) -> pb.SidecarConfiguration:
    body: dict[str, Any] = {"serviceId": service_id, "routing": {"defaultRoute": "blockchain-core"}}
    return json_format.ParseDict(body | over, pb.SidecarConfiguration())


def policy(policy_id: str = "rate-limit-api", requests: int = 100, **over: Any) -> dict[str, Any]:
    return {
        "policyId": policy_id,
        "type": "POLICY_TYPE_RATE_LIMIT",
        "rules": [{"action": "POLICY_ACTION_RATE_LIMIT", "parameters": {"requests": requests}}],
    } | over


@dataclass
class Sidecars:
    plane: ControlPlane
    sidecar: sidecar_pb2_grpc.SidecarServiceStub
    discovery: discovery_pb2_grpc.DiscoveryServiceStub
    mesh: mesh_pb2_grpc.MeshServiceStub

    async def register(self, name: str = "api-gateway", **kw: Any) -> str:
        reg = registration(name, **kw)
        await self.discovery.Register(dpb.RegisterRequest(registration=reg), metadata=auth(name))
        return reg.service_id

    async def configure(
        self, cfg: pb.SidecarConfiguration, md: Any = None
    ) -> pb.SidecarConfigurationResponse:
        return await self.sidecar.ConfigureSidecar(
            pb.ConfigureSidecarRequest(configuration=cfg), metadata=md or ADMIN
        )


async def open_sidecars(settings: Settings = SETTINGS) -> AsyncIterator[Sidecars]:
    plane = await start_control_plane(settings)
    try:
        async with grpc.aio.insecure_channel(plane.grpc_target) as channel:
            yield Sidecars(
                plane,
                sidecar_pb2_grpc.SidecarServiceStub(channel),
                discovery_pb2_grpc.DiscoveryServiceStub(channel),
                mesh_pb2_grpc.MeshServiceStub(channel),
            )
    finally:
        await plane.stop(grace=0.5)


@pytest.fixture
async def sc() -> AsyncIterator[Sidecars]:
    async for s in open_sidecars():
        yield s
