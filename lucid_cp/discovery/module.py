"""The discovery system as a module (see lucid_cp.system): declarations, and the build, start
and stop of its index, registry, active health checks, servicer and metrics."""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Mapping
from typing import ClassVar

import grpc
from google.protobuf.descriptor import FileDescriptor

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2, discovery_pb2_grpc
from lucid_cp.config import RateLimit
from lucid_cp.discovery.errors import STATUS_ROWS, InvalidServiceConfiguration
from lucid_cp.discovery.health import (
    HealthChecker,
    HttpProber,
    LeaseMembership,
    Membership,
    ProtocolProber,
    StaticMembership,
    TcpProber,
)
from lucid_cp.discovery.health.grpc_probe import GrpcHealthProber
from lucid_cp.discovery.index import InstanceIndex
from lucid_cp.discovery.metrics import DiscoveryMetrics, HealthCheckMetrics
from lucid_cp.discovery.registry import Registry
from lucid_cp.discovery.service import DiscoveryServicer
from lucid_cp.discovery.settings import DiscoverySettings
from lucid_cp.errors import InvalidArgument
from lucid_cp.rpc.metrics import count_from
from lucid_cp.system import Environment


class DiscoverySystem:
    name: ClassVar[str] = "discovery"
    files: ClassVar[tuple[FileDescriptor, ...]] = (discovery_pb2.DESCRIPTOR,)
    # The seed's table (api-spec.md, "Rate Limiting"), per principal.
    rate_limits: ClassVar[Mapping[str, RateLimit]] = {
        "registration": RateLimit(100),
        "health": RateLimit(1000),
        "discovery": RateLimit(1000),
    }
    status_rows: ClassVar[Mapping[type[Exception], int]] = STATUS_ROWS
    invalid_request: ClassVar[type[InvalidArgument]] = InvalidServiceConfiguration
    settings_type: ClassVar[type[DiscoverySettings]] = DiscoverySettings

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        defaults = DiscoverySettings()
        parser.add_argument(
            "--no-health-checks",
            action="store_true",
            help="do not actively check registered instances",
        )
        parser.add_argument(
            "--health-max-concurrency",
            type=int,
            default=defaults.health_max_concurrent_checks,
            metavar="N",
            help="health-check probes in flight at once (default %(default)s)",
        )
        parser.add_argument(
            "--replica-id",
            default=defaults.health_replica_id,
            help="this replica's id among those sharing an etcd store (default: random)",
        )

    @classmethod
    def settings_from(cls, args: argparse.Namespace) -> DiscoverySettings:
        return DiscoverySettings(
            health_checks_enabled=not args.no_health_checks,
            health_max_concurrent_checks=args.health_max_concurrency,
            health_replica_id=args.replica_id,
        )

    def __init__(self, env: Environment) -> None:
        self._env = env
        self.settings = env.settings.section(DiscoverySettings)
        self.metrics = DiscoveryMetrics(env.metrics)
        self.index = InstanceIndex(env.store, clock=env.clock, history=self.settings.watch_history)
        self.registry = Registry(env.store, self.index, env.clock)
        self.checker: HealthChecker | None = None
        # This replica's id among those sharing a store (health checks, sidecar streams).
        self.replica_id = self.settings.health_replica_id or uuid.uuid4().hex

    async def start(self) -> None:
        await self.index.start()
        index, metrics = self.index, self.metrics
        metrics.store_revision.set_function(lambda: index.revision)
        metrics.index_instances.set_function(lambda: len(index))
        metrics.watchers.set_function(lambda: index.watchers)
        metrics.watch_connected.set_function(lambda: 1 if index.connected else 0)
        count_from(
            self._env.metrics,
            "lucid_discovery_index_resyncs",
            "Full re-lists of the discovery index (start, and after a compaction).",
            lambda: index.resyncs,
        )
        count_from(
            self._env.metrics,
            "lucid_discovery_read_your_writes_timeouts",
            "Writes answered before this replica's index had applied them (the wait timed out).",
            lambda: index.read_your_writes_timeouts,
        )
        if self.settings.health_checks_enabled:
            self.checker = self._health_checker()
            await self.checker.start()

    def register(self, server: grpc.aio.Server) -> None:
        discovery_pb2_grpc.add_DiscoveryServiceServicer_to_server(
            DiscoveryServicer(self.registry),  # type: ignore[arg-type]
            server,
        )

    async def stop(self) -> None:
        """Hands this replica's health checks over to the others, then stops the index."""
        if self.checker is not None:
            await self.checker.stop()
        await self.index.stop()

    def _health_checker(self) -> HealthChecker:
        """Replicas share checks through store leases, except on the single-process sqlite and
        memory stores, where this replica checks everything."""
        settings, store = self.settings, self._env.store
        replica_id = self.replica_id
        user_agent = f"lucid-health-check/{replica_id}"
        membership: Membership
        if not store.shared:
            membership = StaticMembership(replica_id)
        else:
            membership = LeaseMembership(store, replica_id, self._env.lease, clock=self._env.clock)
        clock = self._env.clock
        prober = ProtocolProber(
            HttpProber(user_agent, clock=clock),
            TcpProber(clock=clock),
            GrpcHealthProber(user_agent),
        )
        checker = HealthChecker(
            store,
            self.index,
            clock,
            prober,
            membership,
            observer=HealthCheckMetrics(self.metrics),
            max_concurrency=settings.health_max_concurrent_checks,
            write_concurrency=settings.health_write_concurrency,
        )
        self.metrics.health_checked_instances.set_function(lambda: len(checker))
        self.metrics.health_replicas.set_function(lambda: len(membership.members()))
        self.metrics.health_pending_writes.set_function(lambda: checker.writer.backlog)
        return checker
