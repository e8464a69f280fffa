"""Server reflection v1 (lucid_cp/rpc/reflection_v1.py) next to v1alpha, over a real control
plane on 127.0.0.1:0, without a token (reflection is public)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2
from grpc_reflection.v1alpha import reflection_pb2_grpc as v1alpha_pb2_grpc

from lucid_cp.api.grpc.reflection.v1 import reflection_pb2 as v1_pb2
from lucid_cp.api.grpc.reflection.v1 import reflection_pb2_grpc as v1_pb2_grpc
from lucid_cp.app import ControlPlane, start_control_plane
from lucid_cp.config import Settings
from lucid_cp.discovery.settings import DiscoverySettings

SERVED = {
    "lucid.discovery.v1.DiscoveryService",
    "lucid.mesh.v1.MeshService",
    "lucid.sidecar.v1.SidecarService",
    "lucid.messaging.v1.EventService",
    "lucid.messaging.v1.MessageService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
}


@pytest.fixture
async def plane() -> AsyncIterator[ControlPlane]:
    settings = Settings(
        store_url="memory://",
        grpc_addr="127.0.0.1:0",
        jwt_secret=b"reflection-tests-secret-0123456789",
        sections=(DiscoverySettings(health_checks_enabled=False),),
    )
    started = await start_control_plane(settings)
    try:
        yield started
    finally:
        await started.stop(0)


async def _ask(stub: Any, pb: Any, *requests: Any) -> list[Any]:
    """Sends ``requests`` on one reflection stream; returns one response per request."""

    async def stream() -> AsyncIterator[Any]:
        for request in requests:
            yield request

    call = stub.ServerReflectionInfo(stream(), timeout=10)
    return [response async for response in call]


async def test_v1_lists_the_services_and_returns_their_files(plane: ControlPlane) -> None:
    async with grpc.aio.insecure_channel(plane.grpc_target) as channel:
        listed, by_symbol, missing = await _ask(
            v1_pb2_grpc.ServerReflectionStub(channel),
            v1_pb2,
            v1_pb2.ServerReflectionRequest(list_services=""),
            v1_pb2.ServerReflectionRequest(
                file_containing_symbol="lucid.discovery.v1.DiscoveryService"
            ),
            v1_pb2.ServerReflectionRequest(file_containing_symbol="no.such.Thing"),
        )
    assert isinstance(listed, v1_pb2.ServerReflectionResponse)
    assert {s.name for s in listed.list_services_response.service} == SERVED
    assert listed.original_request.HasField("list_services")

    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in by_symbol.file_descriptor_response.file_descriptor_proto
    ]
    assert files[0].name == "lucid/discovery/v1/discovery.proto"
    assert "DiscoveryService" in {s.name for s in files[0].service}
    assert by_symbol.original_request.file_containing_symbol == (
        "lucid.discovery.v1.DiscoveryService"
    )

    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


async def test_v1_describes_itself(plane: ControlPlane) -> None:
    async with grpc.aio.insecure_channel(plane.grpc_target) as channel:
        [response] = await _ask(
            v1_pb2_grpc.ServerReflectionStub(channel),
            v1_pb2,
            v1_pb2.ServerReflectionRequest(
                file_containing_symbol="grpc.reflection.v1.ServerReflection"
            ),
        )
    [raw, *_] = response.file_descriptor_response.file_descriptor_proto
    file = descriptor_pb2.FileDescriptorProto.FromString(raw)
    assert (file.name, file.package) == (
        "grpc/reflection/v1/reflection.proto",
        "grpc.reflection.v1",
    )


async def test_v1alpha_still_works(plane: ControlPlane) -> None:
    async with grpc.aio.insecure_channel(plane.grpc_target) as channel:
        [listed] = await _ask(
            v1alpha_pb2_grpc.ServerReflectionStub(channel),
            v1alpha_pb2,
            v1alpha_pb2.ServerReflectionRequest(list_services=""),
        )
    assert {s.name for s in listed.list_services_response.service} == SERVED
