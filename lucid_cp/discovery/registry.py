"""The discovery core: registration under leases, health, heartbeats, and the reads that the
index serves. Pure asyncio over narrow store interfaces and the Clock; it never imports grpc.

Writes go to the store (one txn each, nothing half-written) and then wait, briefly, until the
index has applied them, so a caller reads its own writes from the same replica.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from google.protobuf import timestamp_pb2

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.auth.tokens import Principal
from lucid_cp.clock import Clock
from lucid_cp.discovery import keys
from lucid_cp.discovery.balancer import Balancer, eligible
from lucid_cp.discovery.errors import ServiceAlreadyRegistered, ServiceNotFound
from lucid_cp.discovery.index import InstanceIndex
from lucid_cp.discovery.records import decode_record, encode_record
from lucid_cp.errors import Conflict
from lucid_cp.store.base import (
    Compare,
    CompareOp,
    CompareTarget,
    Get,
    KeyReader,
    KeyValue,
    KeyWriter,
    LeaseNotFoundError,
    Leases,
    Put,
    key_missing,
    mod_revision_is,
)
from lucid_cp.watchcache import Subscription

log = logging.getLogger("lucid_cp.discovery.registry")

READ_YOUR_WRITES_TIMEOUT = 2.0
# Seconds (the clock's) a deregistration waits for each hook before it answers anyway.
DEREGISTERED_HOOK_TIMEOUT = 5.0
CAS_ATTEMPTS = 8


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


# Fields a registration shares, by name, with the stored instance and the register response.
_IDENTITY = ("service_id", "service_name", "cluster", "plane", "version", "instance_id", "ttl")


def _copy_identity(
    reg: pb.ServiceRegistration, target: pb.ServiceInstance | pb.RegisterResponse
) -> None:
    for name in _IDENTITY:
        setattr(target, name, getattr(reg, name))
    target.endpoint.CopyFrom(reg.endpoint)


def _not_found(service_id: str) -> ServiceNotFound:
    return ServiceNotFound(
        f"service instance {service_id} is not registered", details={"serviceId": service_id}
    )


@dataclass(frozen=True, slots=True)
class Deregistration:
    """What a deregistration hook is told."""

    service_id: str
    # The record's mod_revision when it was read: the removal came after it.
    read_revision: int
    # What the store answered for the revoke: the removal's revision, or a later one when an
    # attempt's outcome was unknown (store/base.py, "Faults"). Not the removal's revision to
    # rely on: watch for the first removal of service_id after read_revision instead.
    revision: int


# await hook(deregistration): see Registry.on_deregistered.
DeregisteredHook = Callable[[Deregistration], Awaitable[None]]


class RegistryStore(KeyReader, KeyWriter, Leases, Protocol):
    """The store methods the registry uses: reads, txns and leases (never watch or compact)."""


class Registry:
    def __init__(
        self,
        store: RegistryStore,
        index: InstanceIndex,
        clock: Clock,
        balancer: Balancer | None = None,
    ) -> None:
        self._store = store
        self._index = index
        self._clock = clock
        self._balancer = balancer or Balancer()
        self._deregistered: list[DeregisteredHook] = []

    def on_deregistered(self, hook: DeregisteredHook) -> None:
        """``await hook(deregistration)`` after each successful deregistration made through
        this registry, before the caller is answered, for at most DEREGISTERED_HOOK_TIMEOUT seconds: one that fails
        or times out is logged and cancelled, and the deregistration stands. An instance whose
        lease expires is not reported here (watch the index for that)."""
        self._deregistered.append(hook)

    # -- writes ------------------------------------------------------------------------------

    async def register(
        self, principal: Principal, reg: pb.ServiceRegistration
    ) -> pb.RegisterResponse:
        principal.require_acts_as(reg.service_name)
        now = _timestamp(self._clock.now())
        instance = pb.ServiceInstance(weight=reg.weight, status=pb.HEALTH_STATE_UNKNOWN)
        _copy_identity(reg, instance)
        instance.health_check.CopyFrom(reg.health_check)
        if reg.HasField("metadata"):
            instance.metadata.CopyFrom(reg.metadata)
        instance.registered_at.CopyFrom(now)
        instance.health.status = pb.HEALTH_STATE_UNKNOWN
        instance.health.timestamp.CopyFrom(now)

        key = keys.instance_key(reg.service_id)
        lease = await self._store.grant_lease(reg.ttl)
        # encode_record drops the TLS client key: it is never stored, hence never returned.
        record = encode_record(instance, lease.id)
        result = await self._store.txn([key_missing(key)], [Put(key, record, lease.id)], [Get(key)])
        if not result.succeeded:
            await self._revoke_quietly(lease.id)
            existing = result.responses[0]
            details: dict[str, object] = {"serviceId": reg.service_id}
            if isinstance(existing, KeyValue):
                details["registeredRevision"] = existing.mod_revision
            raise ServiceAlreadyRegistered(
                f"service instance {reg.service_id} is already registered", details=details
            )
        await self._read_your_write(result.revision)
        response = pb.RegisterResponse(
            status=pb.REGISTRATION_STATUS_REGISTERED, revision=result.revision
        )
        _copy_identity(reg, response)
        response.endpoint.tls.client_key = ""  # the response echoes the request, not the record
        if not response.endpoint.tls.ByteSize():
            response.endpoint.ClearField("tls")
        response.registered_at.CopyFrom(now)
        return response

    async def _read_your_write(self, revision: int) -> None:
        """Waits until the index has applied ``revision``, so the caller reads its own write here.
        A timeout is not an error (the write is durable) but is said and counted: reads from
        this replica are stale until the index catches up."""
        if await self._index.wait_for(revision, READ_YOUR_WRITES_TIMEOUT):
            return
        self._index.read_your_writes_timeouts += 1
        log.warning(
            "read-your-writes: the index has not applied revision %d after %.1fs (at %d)",
            revision,
            READ_YOUR_WRITES_TIMEOUT,
            self._index.revision,
        )

    async def _revoke_quietly(self, lease_id: int) -> None:
        try:
            await self._store.revoke_lease(lease_id)
        except LeaseNotFoundError:
            pass

    async def _read(self, service_id: str) -> tuple[KeyValue, pb.ServiceInstance, int]:
        """(the record, its instance, its lease id)."""
        kv = await self._store.get(keys.instance_key(service_id))
        if kv is None:
            raise _not_found(service_id)
        return (kv, *decode_record(kv.value, kv.mod_revision))

    async def deregister(self, principal: Principal, service_id: str) -> int:
        """Deletes the instance and everything under its lease, at once and for good: the lease
        is revoked, so no heartbeat or health update can bring the instance back."""
        kv, instance, lease_id = await self._read(service_id)
        principal.require_acts_as(instance.service_name)
        try:
            revision = await self._store.revoke_lease(lease_id)
        except LeaseNotFoundError:
            raise _not_found(service_id) from None
        await self._read_your_write(revision)
        told = Deregistration(service_id, kv.mod_revision, revision)
        for hook in self._deregistered:
            try:
                async with self._clock.timeout(DEREGISTERED_HOOK_TIMEOUT):
                    await hook(told)
            except TimeoutError:
                log.warning(
                    "a deregistration hook took over %.0fs (%s at %d)",
                    DEREGISTERED_HOOK_TIMEOUT,
                    service_id,
                    revision,
                )
            except Exception:
                log.exception("a deregistration hook failed")
        return revision

    async def update_health(
        self, principal: Principal, service_id: str, update: pb.HealthUpdate
    ) -> tuple[pb.HealthStatus, int]:
        """Applies a manual health report (compare-and-swap on the record) and refreshes the lease."""

        def apply(instance: pb.ServiceInstance) -> bool:
            health = self._next_health(instance.health, update)
            instance.health.CopyFrom(health)
            instance.status = health.status
            instance.last_health_check.CopyFrom(health.last_check)
            return True

        instance, lease_id, revision = await self._modify(principal, service_id, apply)
        await self._keepalive(service_id, lease_id)
        await self._read_your_write(revision)
        return instance.health, revision

    async def drain(self, principal: Principal, service_id: str) -> int:
        """Marks the instance draining (idempotent); Resolve skips it from now on."""

        def apply(instance: pb.ServiceInstance) -> bool:
            if instance.draining:
                return False
            instance.draining = True
            return True

        _, _, revision = await self._modify(principal, service_id, apply)
        await self._read_your_write(revision)
        return revision

    async def _modify(
        self,
        principal: Principal,
        service_id: str,
        apply: Callable[[pb.ServiceInstance], bool],
    ) -> tuple[pb.ServiceInstance, int, int]:
        """Read, ``apply`` (False: nothing to write), compare-and-swap on the record's
        mod_revision under its own lease; retried on a lost race.
        Returns (instance, lease id, revision)."""
        key = keys.instance_key(service_id)
        for _ in range(CAS_ATTEMPTS):
            kv, instance, lease_id = await self._read(service_id)
            principal.require_acts_as(instance.service_name)
            if not apply(instance):
                return instance, lease_id, kv.mod_revision
            try:
                result = await self._store.txn(
                    [mod_revision_is(key, kv.mod_revision)],
                    [Put(key, encode_record(instance, lease_id), lease_id)],
                )
            except LeaseNotFoundError:
                raise _not_found(service_id) from None
            if result.succeeded:
                return instance, lease_id, result.revision
        raise Conflict(
            f"service instance {service_id} changed concurrently; retry",
            details={"key": key.decode()},
        )

    def _next_health(self, current: pb.HealthStatus, update: pb.HealthUpdate) -> pb.HealthStatus:
        now = _timestamp(self._clock.now())
        health = pb.HealthStatus(
            status=update.status, error=update.error, source=pb.HEALTH_SOURCE_MANUAL
        )
        health.timestamp.CopyFrom(now)
        health.last_check.CopyFrom(now)
        if update.HasField("response_time"):
            health.response_time = update.response_time
        if update.HasField("details"):
            health.details.CopyFrom(update.details)
        if update.status in (pb.HEALTH_STATE_HEALTHY, pb.HEALTH_STATE_DEGRADED):
            health.consecutive_successes = current.consecutive_successes + 1
        elif update.status == pb.HEALTH_STATE_UNHEALTHY:
            health.consecutive_failures = current.consecutive_failures + 1
        return health

    async def _keepalive(self, service_id: str, lease_id: int) -> int:
        try:
            return await self._store.keepalive(lease_id)
        except LeaseNotFoundError:
            raise _not_found(service_id) from None

    async def heartbeat(
        self, principal: Principal, service_id: str, active_connections: int | None
    ) -> tuple[int, int]:
        """Refreshes the lease (no write) and, when the reported load changed, records it.
        Returns (ttl, revision)."""
        instance = self._index.get(service_id)
        lease_id = self._index.lease_of(service_id)
        if instance is None:
            _, instance, lease_id = await self._read(service_id)
        principal.require_acts_as(instance.service_name)
        ttl = await self._keepalive(service_id, lease_id)
        revision = self._index.revision
        if active_connections is not None and active_connections != self._index.active_connections(
            service_id
        ):
            key = keys.instance_key(service_id)
            try:
                result = await self._store.txn(
                    [Compare(key, CompareTarget.CREATE, CompareOp.GREATER, 0)],
                    [Put(keys.load_key(service_id), str(active_connections).encode(), lease_id)],
                )
            except LeaseNotFoundError:
                raise _not_found(service_id) from None
            if not result.succeeded:
                raise _not_found(service_id)
            revision = result.revision
            await self._read_your_write(revision)
        return ttl, revision

    # -- reads (index only) -----------------------------------------------------------------

    def get_instance(self, service_id: str) -> pb.ServiceInstance:
        """One instance, as the index holds it, with its active connections."""
        cached = self._index.get(service_id)
        if cached is None:
            raise _not_found(service_id)
        instance = pb.ServiceInstance()
        instance.CopyFrom(cached)  # the cached one is shared and immutable
        instance.active_connections = self._index.active_connections(service_id)
        return instance

    def discover(self, request: pb.DiscoverRequest) -> pb.DiscoverResponse:
        response = pb.DiscoverResponse(
            limit=request.limit, offset=request.offset, revision=self._index.revision
        )
        total = 0
        end = request.offset + request.limit
        for instance in self._index.ordered(request.service_name):
            if request.cluster and instance.cluster != request.cluster:
                continue
            if request.plane and instance.plane != request.plane:
                continue
            if request.status and instance.status != request.status:
                continue
            if request.offset <= total < end:
                added = response.services.add()
                added.CopyFrom(instance)
                added.active_connections = self._index.active_connections(instance.service_id)
            total += 1
        response.total = total
        return response

    def resolve(self, request: pb.ResolveRequest) -> pb.ResolveResponse:
        instances = self._index.of_service(request.service_name)
        candidates = _eligible(instances.values(), request)
        chosen = self._balancer.pick(
            request.load_balance,
            candidates,
            cursor_key=f"{request.service_name}\x00{request.version}",
            hash_key=request.hash_key,
            connections=self._index.active_connections,
        )
        if chosen is None:
            raise self._no_instance(request, instances)
        response = pb.ResolveResponse(
            host=chosen.endpoint.host,
            port=chosen.endpoint.port,
            protocol=chosen.endpoint.protocol,
            path=chosen.endpoint.path,
            service_id=chosen.service_id,
            service_name=chosen.service_name,
            instance_id=chosen.instance_id,
            version=chosen.version,
            status=chosen.status,
            revision=self._index.revision,
        )
        if chosen.endpoint.HasField("tls"):
            response.tls.CopyFrom(chosen.endpoint.tls)
        return response

    def _no_instance(
        self, request: pb.ResolveRequest, instances: dict[str, pb.ServiceInstance]
    ) -> ServiceNotFound:
        by_status: dict[str, int] = {}
        for i in instances.values():
            name = pb.HealthState.Name(i.status).removeprefix("HEALTH_STATE_").lower()
            by_status[name] = by_status.get(name, 0) + 1
            if i.draining:
                by_status["draining"] = by_status.get("draining", 0) + 1
        what = f"{request.service_name}" + (
            f" version {request.version}" if request.version else ""
        )
        if not instances:
            message = f"no instances of service {what} are registered"
        else:
            counts = ", ".join(f"{n} {state}" for state, n in sorted(by_status.items()))
            message = (
                f"no healthy instance of service {what} ({len(instances)} registered: {counts})"
            )
            fallback = pb.ResolveRequest(include_unhealthy=True, version=request.version)
            if not request.include_unhealthy and _eligible(instances.values(), fallback):
                message += "; includeUnhealthy=true resolves to an unhealthy one instead"
        return ServiceNotFound(
            message,
            details={
                "serviceName": request.service_name,
                "registered": len(instances),
                **by_status,
            },
        )

    def watch(self, request: pb.WatchRequest) -> Subscription[pb.WatchResponse]:
        def match(instance: pb.ServiceInstance) -> bool:
            return (not request.cluster or instance.cluster == request.cluster) and (
                not request.plane or instance.plane == request.plane
            )

        return self._index.subscribe(
            match, service_name=request.service_name, start_revision=request.start_revision
        )


def _eligible(
    instances: Iterable[pb.ServiceInstance], request: pb.ResolveRequest
) -> list[pb.ServiceInstance]:
    """The instances Resolve may pick from (``balancer.eligible``)."""
    return eligible(instances, version=request.version, include_unhealthy=request.include_unhealthy)
