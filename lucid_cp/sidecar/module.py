"""The sidecar system as a module (see lucid_cp.system): declarations, and the build, start and
stop of its index, core and servicer. It builds on discovery (a configuration belongs to a
registered instance and lives under its lease) and on the mesh (the mesh-wide mTLS mode, for a
warning), both started before it. Configuration only for now: nothing is pushed to sidecars
(the Connect stream is a later step)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import grpc
from google.protobuf.descriptor import FileDescriptor

from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2, sidecar_pb2_grpc
from lucid_cp.config import RateLimit
from lucid_cp.discovery.module import DiscoverySystem
from lucid_cp.errors import InvalidArgument, InvalidRequestError
from lucid_cp.mesh.module import MeshSystem
from lucid_cp.rpc.metrics import count_from
from lucid_cp.sidecar.control import SidecarControl
from lucid_cp.sidecar.errors import INVALID_REQUEST, STATUS_ROWS, InvalidSidecarConfiguration
from lucid_cp.sidecar.index import SidecarIndex
from lucid_cp.sidecar.service import SidecarServicer
from lucid_cp.system import Environment


@dataclass(frozen=True, slots=True)
class SidecarSettings:
    # Changes retained by the index's history (for the distribution stream to come).
    index_history: int = 1_000


class SidecarSystem:
    name: ClassVar[str] = "sidecar"
    files: ClassVar[tuple[FileDescriptor, ...]] = (sidecar_pb2.DESCRIPTOR,)
    # The seed's table (api-spec.md, "Rate Limiting"), per principal: sidecar configuration
    # updates 10/min, metrics retrieval 100/min (the reads of configurations and policies
    # share it, as planned in sidecar.proto).
    rate_limits: ClassVar[Mapping[str, RateLimit]] = {
        "sidecar-config": RateLimit(10),
        "sidecar-metrics": RateLimit(100),
    }
    status_rows: ClassVar[Mapping[type[Exception], int]] = STATUS_ROWS
    invalid_request: ClassVar[type[InvalidArgument]] = InvalidSidecarConfiguration
    invalid_requests: ClassVar[Mapping[str, InvalidRequestError]] = INVALID_REQUEST
    settings_type: ClassVar[type[SidecarSettings]] = SidecarSettings

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """No flags yet."""

    @classmethod
    def settings_from(cls, args: argparse.Namespace) -> SidecarSettings:
        return SidecarSettings()

    def __init__(self, env: Environment) -> None:
        self._env = env
        settings = env.settings.section(SidecarSettings)
        discovery = env.system(DiscoverySystem)
        mesh = env.system(MeshSystem)
        self.index = SidecarIndex(env.store, clock=env.clock, history=settings.index_history)
        self.control = SidecarControl(env.store, self.index, discovery.index, mesh.index, env.clock)

    async def start(self) -> None:
        await self.index.start()
        index = self.index
        count_from(
            self._env.metrics,
            "lucid_sidecar_read_your_writes_timeouts",
            "Sidecar configuration writes answered before this replica's index had applied them.",
            lambda: index.read_your_writes_timeouts,
        )

    def register(self, server: grpc.aio.Server) -> None:
        sidecar_pb2_grpc.add_SidecarServiceServicer_to_server(
            SidecarServicer(self.control),  # type: ignore[arg-type]
            server,
        )

    async def stop(self) -> None:
        await self.index.stop()
