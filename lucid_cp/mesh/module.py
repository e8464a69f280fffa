"""The mesh control system as a module (see lucid_cp.system): declarations, and the build,
start and stop of its index, core and servicer. It builds on discovery (started before it):
circuit breakers need registered instances, write-time warnings the registered services."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import grpc
from google.protobuf.descriptor import FileDescriptor

from lucid_cp.api.lucid.mesh.v1 import mesh_pb2, mesh_pb2_grpc
from lucid_cp.config import RateLimit
from lucid_cp.discovery.module import DiscoverySystem
from lucid_cp.errors import InvalidArgument
from lucid_cp.mesh.control import MeshControl
from lucid_cp.mesh.errors import INVALID_REQUEST, STATUS_ROWS, InvalidTrafficPolicy
from lucid_cp.mesh.index import MeshIndex
from lucid_cp.mesh.service import MeshServicer
from lucid_cp.rpc.metrics import count_from
from lucid_cp.system import Environment


@dataclass(frozen=True, slots=True)
class MeshSettings:
    # Changes retained by the index's history (for the sidecar distribution to come).
    index_history: int = 1_000


class MeshSystem:
    name: ClassVar[str] = "mesh"
    files: ClassVar[tuple[FileDescriptor, ...]] = (mesh_pb2.DESCRIPTOR,)
    # The seed's table (api-spec.md, "Rate Limiting"), per principal: traffic management
    # (traffic policies, circuit breakers, Explain) and security management (security
    # policies, mTLS).
    rate_limits: ClassVar[Mapping[str, RateLimit]] = {
        "traffic": RateLimit(100),
        "security": RateLimit(50),
    }
    status_rows: ClassVar[Mapping[type[Exception], int]] = STATUS_ROWS
    # Every method names its own (INVALID_REQUEST); this one is the fallback the contract needs.
    invalid_request: ClassVar[type[InvalidArgument]] = InvalidTrafficPolicy
    invalid_requests: ClassVar[Mapping[str, type[InvalidArgument]]] = INVALID_REQUEST
    settings_type: ClassVar[type[MeshSettings]] = MeshSettings

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """No flags yet."""

    @classmethod
    def settings_from(cls, args: argparse.Namespace) -> MeshSettings:
        return MeshSettings()

    def __init__(self, env: Environment) -> None:
        self._env = env
        settings = env.settings.section(MeshSettings)
        discovery = env.system(DiscoverySystem)
        self.index = MeshIndex(env.store, clock=env.clock, history=settings.index_history)
        self.control = MeshControl(env.store, self.index, discovery.index, env.clock)

    async def start(self) -> None:
        await self.index.start()
        index = self.index
        count_from(
            self._env.metrics,
            "lucid_mesh_read_your_writes_timeouts",
            "Mesh writes answered before this replica's index had applied them.",
            lambda: index.read_your_writes_timeouts,
        )

    def register(self, server: grpc.aio.Server) -> None:
        mesh_pb2_grpc.add_MeshServiceServicer_to_server(
            MeshServicer(self.control),  # type: ignore[arg-type]
            server,
        )

    async def stop(self) -> None:
        await self.index.stop()
