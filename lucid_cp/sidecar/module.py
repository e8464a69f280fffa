"""The sidecar system as a module (see lucid_cp.system): declarations, and the build, start and
stop of its indexes, cores and servicer. It builds on discovery (a configuration belongs to a
registered instance and lives under its lease; snapshots carry endpoints) and on the mesh
(policies, circuit breakers and mTLS go into snapshots), both started before it.

Start order: the configuration index, the status index, the status writer (it writes the
replica's progress under the process's replica lease), then the distributor (its watch replays
what the indexes applied meanwhile). Stop in reverse: streams end, their sessions are recorded as
disconnected and written, and the replica's progress record is deleted."""

from __future__ import annotations

import argparse
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import ClassVar

import grpc
from google.protobuf.descriptor import FileDescriptor

from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2, sidecar_pb2_grpc
from lucid_cp.config import RateLimit
from lucid_cp.discovery.index import InstanceIndex
from lucid_cp.discovery.module import DiscoverySystem
from lucid_cp.errors import InvalidArgument, InvalidRequestError
from lucid_cp.mesh import keys
from lucid_cp.mesh.index import MeshIndex
from lucid_cp.mesh.module import MeshSystem
from lucid_cp.rpc.metrics import count_from
from lucid_cp.sidecar.control import SidecarControl
from lucid_cp.sidecar.defaults import SidecarDefaults
from lucid_cp.sidecar.distributor import Distributor
from lucid_cp.sidecar.errors import INVALID_REQUEST, STATUS_ROWS, InvalidSidecarConfiguration
from lucid_cp.sidecar.index import SidecarIndex
from lucid_cp.sidecar.observe import Observer
from lucid_cp.sidecar.service import SidecarServicer
from lucid_cp.sidecar.snapshot import SnapshotBuilder
from lucid_cp.sidecar.status import StatusIndex
from lucid_cp.sidecar.writer import StatusWriter
from lucid_cp.system import Environment


@dataclass(frozen=True, slots=True)
class SidecarSettings:
    # Changes retained by the configuration index's history.
    index_history: int = 1_000
    # Seconds between batched status writes (sessions, usage, replica progress).
    status_write_interval: float = 0.05


class _IndexContents:
    """What the indexes hold, for the distributor's maps (IndexContents)."""

    def __init__(self, mesh: MeshIndex, discovery: InstanceIndex, configs: SidecarIndex) -> None:
        self._mesh, self._discovery, self._configs = mesh, discovery, configs

    def policies(self) -> Iterator[tuple[bytes, tuple[str, str]]]:
        for kind, records in (
            (keys.Kind.TRAFFIC, self._mesh.traffic_policies()),
            (keys.Kind.SECURITY, self._mesh.security_policies()),
        ):
            for r in records:
                key = keys.policy_key(kind, r.policy.namespace, r.policy.name)
                yield key, (r.policy.source, r.policy.destination)

    def instances(self) -> Iterator[tuple[str, str]]:
        return ((i.service_id, i.service_name) for i in self._discovery.ordered())

    def configs(self) -> Iterator[tuple[str, str]]:
        return ((sid, r.service_name) for sid, r in self._configs.items())


class SidecarSystem:
    name: ClassVar[str] = "sidecar"
    files: ClassVar[tuple[FileDescriptor, ...]] = (sidecar_pb2.DESCRIPTOR,)
    # The seed's table (api-spec.md, "Rate Limiting"), per principal: sidecar configuration
    # updates 10/min, metrics retrieval 100/min (the reads of configurations, policies and
    # distribution status share it), sidecar health 1000/min. Connect: 1000 stream openings
    # per minute per principal (a reconnect storm of one service's sidecars is not throttled
    # below what they need; messages on an open stream are not counted).
    rate_limits: ClassVar[Mapping[str, RateLimit]] = {
        "sidecar-config": RateLimit(10),
        "sidecar-metrics": RateLimit(100),
        "sidecar-health": RateLimit(1000),
        "sidecar-connect": RateLimit(1000),
        # The seed's "policy management" (50/min): the sidecar policies' PUT and GET.
        "policy": RateLimit(50),
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
        self._discovery, self._mesh = discovery, mesh
        self.index = SidecarIndex(env.store, clock=env.clock, history=settings.index_history)
        self.control = SidecarControl(env.store, self.index, discovery.index, mesh.index, env.clock)
        mesh.control.use_destination_defaults(SidecarDefaults(self.index))
        self.status = StatusIndex(env.store, clock=env.clock)
        self.writer = StatusWriter(
            env.store,
            discovery.index.lease_of,
            # Per process: a replica restarted with the same --replica-id must not make its
            # predecessor's session records read as live again.
            f"{discovery.replica_id}-{secrets.token_hex(3)}",
            lease=env.lease,
            clock=env.clock,
            interval=settings.status_write_interval,
        )
        self.builder = SnapshotBuilder(discovery.index, self.index, mesh.index)
        self.distributor = Distributor(
            env.store,
            self.builder,
            instances=discovery.index,
            configs=self.index,
            mesh=mesh.index,
            status=self.status,
            writer=self.writer,
            clock=env.clock,
        )
        distributor = self.distributor
        self.observer = Observer(
            env.store,
            self.status,
            discovery.index,
            (mesh.index, self.index),
            lambda: distributor.sessions,
            env.clock,
        )

    async def start(self) -> None:
        await self.index.start()
        await self.status.start()
        await self.writer.start()
        await self.distributor.start(
            _IndexContents(self._mesh.index, self._discovery.index, self.index)
        )
        index, distributor, writer = self.index, self.distributor, self.writer
        count_from(
            self._env.metrics,
            "lucid_sidecar_snapshots_pushed",
            "Snapshots queued to connected sidecars by this replica.",
            lambda: distributor.pushes,
        )
        count_from(
            self._env.metrics,
            "lucid_sidecar_snapshots_unchanged",
            "Snapshots rebuilt after a change and not sent: the sidecar already had that content.",
            lambda: distributor.skipped,
        )
        count_from(
            self._env.metrics,
            "lucid_sidecar_status_write_failures",
            "Batched sidecar status writes that failed (retried with backoff).",
            lambda: writer.failures,
        )
        count_from(
            self._env.metrics,
            "lucid_sidecar_read_your_writes_timeouts",
            "Sidecar configuration writes answered before this replica's index had applied them.",
            lambda: index.read_your_writes_timeouts,
        )

    def register(self, server: grpc.aio.Server) -> None:
        sidecar_pb2_grpc.add_SidecarServiceServicer_to_server(
            SidecarServicer(self.control, self.distributor, self.observer),  # type: ignore[arg-type]
            server,
        )

    def end_streams(self) -> None:
        """Shutting down: every Connect stream ends with UNAVAILABLE, so sidecars reconnect to
        another replica at once (their session records say disconnected)."""
        self.distributor.end_streams()

    async def stop(self) -> None:
        await self.distributor.stop()
        await self.writer.stop()
        await self.status.stop()
        await self.index.stop()
