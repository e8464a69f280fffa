"""The composition root: settings -> store, clock -> systems -> gRPC server. Every dependency is
built here and handed to its user; nothing else constructs clients, servers or singletons.

Adding a system means adding it to ``SYSTEMS`` (and nothing else here). Start-up checks every
declaration before anything starts (policies, buckets, error rows), then starts the systems in
order; when a step fails, everything already started is stopped in reverse and the store is
closed, so a failed start leaves no task running and no file locked.

Failures the user can fix (a port in use, a store that cannot be opened or does not answer, a
metrics address in use) are raised as :class:`~lucid_cp.startup.StartupError` with one line;
configuration that contradicts the declarations is a :class:`~lucid_cp.rpc.policy.PolicyError`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, start_http_server

from lucid_cp.auth.ratelimit import RateLimiter
from lucid_cp.auth.tokens import TokenVerifier
from lucid_cp.clock import Clock, SystemClock
from lucid_cp.config import RateLimit, Settings
from lucid_cp.discovery.module import DiscoverySystem
from lucid_cp.events.module import EventSystem
from lucid_cp.mesh.module import MeshSystem
from lucid_cp.messaging.module import MessagingSystem
from lucid_cp.readiness import StoreMonitor
from lucid_cp.replica_lease import ReplicaLease
from lucid_cp.rpc import reflection_v1
from lucid_cp.rpc.interceptor import MAX_TOKEN_BYTES, PolicyInterceptor
from lucid_cp.rpc.metrics import RpcMetrics
from lucid_cp.rpc.policy import MethodPolicy, PolicyError, check_buckets, policies_from
from lucid_cp.rpc.status import StatusTable
from lucid_cp.sidecar.module import SidecarSystem
from lucid_cp.startup import StartupError, ensure_bindable
from lucid_cp.store import open_store
from lucid_cp.store.base import Store, StoreError
from lucid_cp.system import Environment, System

log = logging.getLogger("lucid_cp.app")

# The systems this process serves, in start order (a system may use those before it).
SYSTEMS: tuple[type[System], ...] = (
    DiscoverySystem,
    MeshSystem,
    SidecarSystem,
    MessagingSystem,
    EventSystem,
)
# gRPC's limit on a request's headers (metadata): twice the largest token the interceptor accepts
# (MAX_TOKEN_BYTES, 8 KiB), so a token over that is refused as UNAUTHENTICATED by the interceptor
# rather than as RESOURCE_EXHAUSTED by grpc. Headers over this get grpc's own refusal (see README).
MAX_METADATA_BYTES = 2 * MAX_TOKEN_BYTES

S = TypeVar("S", bound=System)


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


@dataclass
class ControlPlane:
    server: grpc.aio.Server
    grpc_port: int
    grpc_target: str
    store: Store
    metrics: RpcMetrics
    health: health.aio.HealthServicer
    settings: Settings
    systems: dict[str, System]
    _unwind: contextlib.AsyncExitStack = field(repr=False)

    def system(self, kind: type[S]) -> S:
        found = self.systems[kind.name]
        assert isinstance(found, kind)
        return found

    async def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown: report NOT_SERVING, end the long-lived streams of the systems that
        hold them (their clients reconnect elsewhere instead of waiting out the grace period),
        drain in-flight calls, then stop the systems in reverse order (discovery hands its
        health checks to the other replicas), revoke the replica lease and close the store."""
        await self.health.enter_graceful_shutdown()
        for system in reversed(list(self.systems.values())):
            end_streams = getattr(system, "end_streams", None)
            if end_streams is None:
                continue
            try:
                end_streams()
            except Exception:  # never in the way of the shutdown itself
                log.exception("ending the streams of a system failed; draining them instead")
        await self.server.stop(self.settings.shutdown_grace if grace is None else grace)
        await self._unwind.aclose()


def rate_limits_for(
    systems: Iterable[type[System]], overrides: Mapping[str, RateLimit]
) -> dict[str, RateLimit]:
    """The systems' default buckets with the configured overrides; an override naming a bucket
    no system declares is a configuration error (a typo would otherwise be ignored)."""
    limits: dict[str, RateLimit] = {}
    owner: dict[str, str] = {}
    for kind in systems:
        for bucket, limit in kind.rate_limits.items():
            if bucket in owner:
                raise PolicyError(
                    f"rate-limit bucket {bucket!r} is declared by both {owner[bucket]} and {kind.name}"
                )
            owner[bucket] = kind.name
            limits[bucket] = limit
    unknown = sorted(set(overrides) - set(limits))
    if unknown:
        raise PolicyError(
            f"rate limit given for unknown bucket(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(limits))}"
        )
    return {**limits, **overrides}


def method_policies(systems: Iterable[type[System]]) -> dict[str, MethodPolicy]:
    policies: dict[str, MethodPolicy] = {}
    for kind in systems:
        # ``invalid_requests`` is optional: a system with one invalid-request error omits it.
        per_method = getattr(kind, "invalid_requests", None)
        policies.update(policies_from(kind.files, kind.invalid_request, per_method))
    return policies


async def start_control_plane(
    settings: Settings,
    *,
    clock: Clock | None = None,
    store: Store | None = None,
    systems: Sequence[type[System]] = SYSTEMS,
) -> ControlPlane:
    # Declarations first: nothing has started, so a bad one costs nothing to refuse.
    names = [kind.name for kind in systems]
    if len(set(names)) != len(names):
        raise PolicyError(f"two systems share a name: {names}")
    statuses = StatusTable(kind.status_rows for kind in systems)
    limits = rate_limits_for(systems, settings.rate_limits)
    policies = method_policies(systems)
    check_buckets(policies, limits)

    clock = clock or SystemClock()
    registry = CollectorRegistry()
    metrics = RpcMetrics(registry)
    unwind = contextlib.AsyncExitStack()
    try:
        if store is None:
            store = _open_store(settings.store_url, clock)
        unwind.push_async_callback(store.close)
        await _check_store(store, settings.store_url, clock)
        # One lease per process, shared by the systems; revoked after they stopped.
        lease = ReplicaLease(store, clock, ttl=settings.replica_ttl)
        unwind.push_async_callback(lease.stop)
        await lease.start()
        env = Environment(settings, store, clock, registry, lease)
        for kind in systems:
            system = kind(env)
            unwind.push_async_callback(system.stop)
            await system.start()
            env.systems[kind.name] = system

        verifier = TokenVerifier(
            settings.jwt_secret, clock, issuer=settings.jwt_issuer, audience=settings.jwt_audience
        )
        limiter = RateLimiter(limits, clock) if settings.rate_limits_enabled else None
        server = grpc.aio.server(
            interceptors=[PolicyInterceptor(policies, verifier, limiter, metrics, statuses)],
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
                ("grpc.so_reuseport", 0),
                # Soft and hard limit alike (no random refusals in between): room for a token
                # up to the interceptor's MAX_TOKEN_BYTES plus the other headers.
                ("grpc.max_metadata_size", MAX_METADATA_BYTES),
                ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES),
            ],
        )
        for system in env.systems.values():
            system.register(server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        service_names = [
            s.full_name for kind in systems for f in kind.files for s in f.services_by_name.values()
        ]
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        reflection_v1.enable_server_reflection([*service_names, health_name], server)
        ensure_bindable(settings.grpc_addr, "gRPC", "--grpc-addr")
        try:
            port = server.add_insecure_port(settings.grpc_addr)
        except RuntimeError as e:  # lost a race with another process since the check above
            raise StartupError(
                f"cannot listen for gRPC on {settings.grpc_addr}: the address is in use or "
                "not local (choose another with --grpc-addr)"
            ) from e
        # Health follows the store (readiness.py): NOT_SERVING until the first probe answers.
        monitor = StoreMonitor(store, health_servicer, service_names, clock)
        await monitor.not_serving()
        await server.start()
        unwind.push_async_callback(server.stop, 0)
        await monitor.start()
        unwind.push_async_callback(monitor.stop)
        if settings.metrics_addr:
            metrics_server = _start_metrics_server(settings.metrics_addr, registry)
            unwind.callback(metrics_server.server_close)  # releases the port
            unwind.callback(metrics_server.shutdown)  # stops the serving thread (runs first)
    except BaseException:
        await unwind.aclose()
        raise

    host, _ = split_addr(settings.grpc_addr)
    plane = ControlPlane(
        server=server,
        grpc_port=port,
        grpc_target=f"{host}:{port}",
        store=store,
        metrics=metrics,
        health=health_servicer,
        settings=settings,
        systems=dict(env.systems),
        _unwind=unwind,
    )
    log.info(
        "control plane serving", extra={"grpc": plane.grpc_target, "store": settings.store_url}
    )
    return plane


def _open_store(url: str, clock: Clock) -> Store:
    try:
        return open_store(url, clock=clock)
    except (ValueError, StoreError) as e:
        raise StartupError(f"cannot open the state store: {e}") from e


async def _check_store(store: Store, url: str, clock: Clock) -> None:
    """One read before any system starts, so an unreachable store is one clear error that says
    how long it was tried, not a failure deep inside the first system's start."""
    started = clock.monotonic()
    try:
        await store.current_revision()
    except StoreError as e:
        raise StartupError(
            f"state store {url} did not answer (tried for {clock.monotonic() - started:.1f}s): {e}"
        ) from e


def _start_metrics_server(addr: str, registry: CollectorRegistry) -> Any:
    host, port = split_addr(addr)
    try:
        server, _ = start_http_server(port, host, registry=registry)
    except OSError as e:
        raise StartupError(
            f"cannot listen for metrics on {addr}: {e.strerror or e} "
            "(choose another with --metrics-addr)"
        ) from e
    return server
