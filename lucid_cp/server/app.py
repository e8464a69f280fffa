"""Wiring: every dependency is built here and handed to its user. Nothing else constructs
clients, servers or singletons."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2, discovery_pb2_grpc
from lucid_cp.auth.ratelimit import RateLimiter
from lucid_cp.auth.tokens import TokenVerifier
from lucid_cp.clock import Clock, SystemClock
from lucid_cp.config import Settings
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
from lucid_cp.discovery.registry import Registry
from lucid_cp.discovery.service import DiscoveryServicer
from lucid_cp.server.interceptor import LucidInterceptor, policies_from
from lucid_cp.server.metrics import HealthCheckMetrics, Metrics
from lucid_cp.store import SqliteStore, open_store
from lucid_cp.store.base import Store

log = logging.getLogger("lucid_cp.server")

# Files whose services this process serves; routing, policies and reflection derive from them.
SERVED_FILES = (discovery_pb2.DESCRIPTOR,)


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


@dataclass
class ControlPlane:
    server: grpc.aio.Server
    grpc_port: int
    grpc_target: str
    store: Store
    index: InstanceIndex
    registry: Registry
    metrics: Metrics
    health: health.aio.HealthServicer
    settings: Settings
    # Active health checks (None when settings.health_checks_enabled is off).
    checker: HealthChecker | None = None
    _metrics_server: Any = field(default=None, repr=False)

    async def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown: report NOT_SERVING, drain in-flight calls, hand this replica's
        health checks over to the others, then close the store."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.shutdown_grace if grace is None else grace)
        if self.checker is not None:
            await self.checker.stop()
        await self.index.stop()
        await self.store.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()


def build_health_checker(
    settings: Settings, store: Store, index: InstanceIndex, clock: Clock, metrics: Metrics
) -> HealthChecker:
    """The active health checker. Replicas share checks through store leases, except on the
    single-process sqlite/memory stores, where this replica checks everything."""
    replica_id = settings.health_replica_id or uuid.uuid4().hex
    user_agent = f"lucid-health-check/{replica_id}"
    membership: Membership
    if isinstance(store, SqliteStore):
        membership = StaticMembership(replica_id)
    else:
        membership = LeaseMembership(store, replica_id, settings.health_replica_ttl, clock=clock)
    prober = ProtocolProber(HttpProber(user_agent), TcpProber(), GrpcHealthProber(user_agent))
    checker = HealthChecker(
        store,
        index,
        clock,
        prober,
        membership,
        observer=HealthCheckMetrics(metrics),
        max_concurrency=settings.health_max_concurrent_checks,
        write_concurrency=settings.health_write_concurrency,
        time_scale=settings.health_time_scale,
    )
    metrics.health_checked_instances.set_function(lambda: len(checker))
    metrics.health_replicas.set_function(lambda: len(membership.members()))
    metrics.health_pending_writes.set_function(lambda: checker.writer.backlog)
    return checker


async def start_control_plane(
    settings: Settings, *, clock: Clock | None = None, store: Store | None = None
) -> ControlPlane:
    clock = clock or SystemClock()
    store = store or open_store(settings.store_url, clock=clock)
    index = InstanceIndex(store, clock=clock, history=settings.watch_history)
    await index.start()
    registry = Registry(store, index, clock)

    metrics = Metrics()
    metrics.store_revision.set_function(lambda: index.revision)
    metrics.index_instances.set_function(lambda: len(index))
    metrics.watchers.set_function(lambda: index.watchers)
    metrics.watch_connected.set_function(lambda: 1 if index.connected else 0)
    metrics.count_from(
        "lucid_discovery_index_resyncs",
        "Full re-lists of the discovery index (start, and after a compaction).",
        lambda: index.resyncs,
    )

    verifier = TokenVerifier(
        settings.jwt_secret, clock, issuer=settings.jwt_issuer, audience=settings.jwt_audience
    )
    limiter = RateLimiter(settings.rate_limits, clock) if settings.rate_limits_enabled else None
    interceptor = LucidInterceptor(policies_from(SERVED_FILES), verifier, limiter, metrics)
    server = grpc.aio.server(
        interceptors=[interceptor],
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    discovery_pb2_grpc.add_DiscoveryServiceServicer_to_server(DiscoveryServicer(registry), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service_names = [s.full_name for f in SERVED_FILES for s in f.services_by_name.values()]
    reflection.enable_server_reflection(
        [
            *service_names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    port = server.add_insecure_port(settings.grpc_addr)
    await server.start()
    checker = None
    if settings.health_checks_enabled:
        checker = build_health_checker(settings, store, index, clock, metrics)
        await checker.start()
    for name in ["", *service_names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    metrics_server = None
    if settings.metrics_addr:
        host, metrics_port = split_addr(settings.metrics_addr)
        metrics_server, _ = start_http_server(metrics_port, host, registry=metrics.registry)

    host, _ = split_addr(settings.grpc_addr)
    plane = ControlPlane(
        server=server,
        grpc_port=port,
        grpc_target=f"{host}:{port}",
        store=store,
        index=index,
        registry=registry,
        metrics=metrics,
        health=health_servicer,
        settings=settings,
        checker=checker,
        _metrics_server=metrics_server,
    )
    log.info(
        "control plane serving", extra={"grpc": plane.grpc_target, "store": settings.store_url}
    )
    return plane
