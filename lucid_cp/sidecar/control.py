"""The sidecar configuration core: stores the configuration of each registered instance's
sidecar, replaces a service's policies across its configurations, and serves reads from the
index. Pure asyncio over narrow store interfaces and the Clock; it never imports grpc.

Ownership: a configuration belongs to its instance's service (discovery's index says which); a
service token acts only for its own service, an admin for any.

Storage: one key per instance, ``/lucid/sidecar/configs/<serviceId>``, put under the instance's
store lease (discovery's ``lease_of``) in a txn that also checks the instance still holds that
lease: deregistration or expiry of the instance deletes its configuration with it, and nothing
can bring it back (deregistration sticks). A policy update rewrites every configuration of the
service holding the policy in ONE txn (each guarded by its mod_revision, each keeping its
lease); more than ``MAX_TXN_OPS`` configurations is refused (``TooManyConfigurations``) rather
than split, since a split would leave the service half-updated.

Every write waits, briefly, until the index has applied it (read-your-writes, as mesh's).
Nothing is pushed to sidecars yet: the Connect stream is a later step.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

from google.protobuf import timestamp_pb2

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2
from lucid_cp.api.lucid.mesh.v1 import mesh_pb2
from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2 as pb
from lucid_cp.auth.tokens import Principal
from lucid_cp.clock import Clock
from lucid_cp.discovery.keys import instance_key
from lucid_cp.errors import Conflict, FieldViolation
from lucid_cp.sidecar import checks, keys
from lucid_cp.sidecar.errors import (
    InstanceNotRegistered,
    InvalidSidecarPolicy,
    SidecarResourceNotFound,
    TooManyConfigurations,
    invalid_configuration,
)
from lucid_cp.sidecar.index import SidecarIndex
from lucid_cp.sidecar.ownership import addressed_service
from lucid_cp.store.base import (
    MAX_REQUEST_BYTES,
    MAX_TXN_OPS,
    OP_OVERHEAD_BYTES,
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    Get,
    KeyReader,
    KeyValue,
    KeyWriter,
    LeaseNotFoundError,
    Put,
    key_missing,
    mod_revision_is,
)

log = logging.getLogger("lucid_cp.sidecar.control")

READ_YOUR_WRITES_TIMEOUT = 2.0
CAS_ATTEMPTS = 8
Record = pb.SidecarConfigurationResponse


class SidecarStore(KeyReader, KeyWriter, Protocol):
    """The store methods the core uses: reads and txns (never leases, watch or compact)."""


class Instances(Protocol):
    """What the core needs of discovery: the registered instances (the discovery index)."""

    def get(self, service_id: str) -> discovery_pb2.ServiceInstance | None: ...

    def lease_of(self, service_id: str) -> int: ...

    def of_service(self, service_name: str) -> Mapping[str, discovery_pb2.ServiceInstance]: ...

    async def wait_for(self, revision: int, timeout: float) -> bool: ...


class MeshView(Protocol):
    """What the core needs of the mesh: the mesh-wide mTLS settings (for a warning)."""

    def mtls(self) -> mesh_pb2.MTLSConfigResponse | None: ...


def _raise_invalid(violations: list[FieldViolation]) -> None:
    if violations:
        message = "; ".join(f"{v.field}: {v.description}" for v in violations)
        raise invalid_configuration(message, violations)


def _lease_is(key: bytes, lease: int) -> Compare:
    return Compare(key, CompareTarget.LEASE, CompareOp.EQUAL, lease)


class SidecarControl:
    def __init__(
        self,
        store: SidecarStore,
        index: SidecarIndex,
        instances: Instances,
        mesh: MeshView,
        clock: Clock,
    ) -> None:
        self._store = store
        self._index = index
        self._instances = instances
        self._mesh = mesh
        self._clock = clock

    # -- configurations ----------------------------------------------------------------------

    async def configure(self, principal: Principal, cfg: pb.SidecarConfiguration) -> Record:
        """Creates or replaces the configuration of instance ``cfg.serviceId``'s sidecar."""
        instance = self._instances.get(cfg.service_id)
        if instance is None:
            # Registered through another replica, perhaps: the store says; if so, let
            # discovery's index catch up with that write before answering 404.
            stored = await self._store.get(instance_key(cfg.service_id))
            if stored is not None:
                await self._instances.wait_for(stored.mod_revision, READ_YOUR_WRITES_TIMEOUT)
                instance = self._instances.get(cfg.service_id)
            if instance is None:
                raise self._not_registered(cfg.service_id)
        principal.require_acts_as(instance.service_name)
        _raise_invalid(checks.config_errors(cfg, "configuration."))
        cfg = _stored_form(cfg)
        siblings = {
            sid: r.configuration
            for sid, r in self._index.of_service(instance.service_name).items()
            if sid != cfg.service_id
        }
        mtls = self._mesh.mtls()
        warnings = checks.config_warnings(
            cfg,
            lambda name: bool(self._instances.of_service(name)),
            mtls.config.mode if mtls is not None else 0,
            siblings,
        )
        key = keys.config_key(cfg.service_id)
        guard_instance = instance_key(cfg.service_id)
        for _ in range(CAS_ATTEMPTS):
            lease = self._instances.lease_of(cfg.service_id)
            if lease == 0:  # gone since the lookup above (a lease compare of 0 holds when absent)
                raise self._not_registered(cfg.service_id)
            kv = await self._store.get(key)
            now = self._now()
            cfg.last_updated.CopyFrom(now)
            record = Record(configuration=cfg, service_name=instance.service_name)
            record.created_at.CopyFrom(Record.FromString(kv.value).created_at if kv else now)
            guard = mod_revision_is(key, kv.mod_revision) if kv is not None else key_missing(key)
            try:
                result = await self._store.txn(
                    [_lease_is(guard_instance, lease), guard],
                    [Put(key, record.SerializeToString(), lease)],
                    [Get(guard_instance)],
                )
            except LeaseNotFoundError:
                raise self._not_registered(cfg.service_id) from None
            if result.succeeded:
                return await self._written(record, result.revision, warnings)
            found = result.responses[0]
            if not isinstance(found, KeyValue) or found.lease != lease:
                # Gone, or re-registered under a new lease this replica has not seen yet.
                raise self._not_registered(cfg.service_id)
        raise Conflict(f"{key.decode()} changed concurrently; retry", details={"key": key.decode()})

    def get_config(self, principal: Principal, service_id: str) -> Record:
        found = self._index.get(service_id)
        if found is None:
            raise self._config_not_found(service_id)
        principal.require_acts_as(found.service_name)
        out = Record()
        out.CopyFrom(found)
        out.read_revision = self._index.revision
        return out

    def require_instance_access(self, principal: Principal, service_id: str) -> None:
        """404 when the instance is not registered, 403 when it is another service's."""
        instance = self._instances.get(service_id)
        if instance is None:
            raise self._not_registered(service_id)
        principal.require_acts_as(instance.service_name)

    async def delete_config(self, principal: Principal, service_id: str) -> int:
        key = keys.config_key(service_id)
        for _ in range(CAS_ATTEMPTS):
            kv = await self._store.get(key)
            if kv is None:
                raise self._config_not_found(service_id)
            principal.require_acts_as(Record.FromString(kv.value).service_name)
            result = await self._store.txn([mod_revision_is(key, kv.mod_revision)], [Delete(key)])
            if result.succeeded:
                await self._read_your_write(result.revision)
                return result.revision
        raise Conflict(f"{key.decode()} changed concurrently; retry", details={"key": key.decode()})

    # -- policies ----------------------------------------------------------------------------

    async def update_policy(
        self,
        principal: Principal,
        policy_id: str,
        policy: pb.SidecarPolicy,
        service_name: str,
        expected_revision: int | None,
    ) -> pb.SidecarPolicyResponse:
        """Replaces the policy in every configuration of its service that holds it, in one txn."""
        owner = self._owner(principal, service_name)
        violations = []
        if policy.policy_id != policy_id:
            violations.append(
                FieldViolation(
                    "policy.policyId", f"must equal the policyId addressed ({policy_id!r})"
                )
            )
        violations += checks.policy_errors(policy, "policy.")
        if violations:
            raise InvalidSidecarPolicy(
                "; ".join(f"{v.field}: {v.description}" for v in violations), violations
            )
        warnings = checks.policy_warnings(policy)
        # The candidates are read from the store itself, at one revision: a configuration written
        # through another replica is never missed, and no wait on this replica's index is needed
        # (it only sees revisions written under its own prefix).
        # Configurations whose lease is gone (expired, not yet reaped: their keys still exist
        # on sqlite and memory) are left out: their instance is no longer registered.
        expired: set[str] = set()
        for _ in range(CAS_ATTEMPTS):
            stored = [
                kv
                for kv in (await self._store.range(keys.CONFIGS)).kvs
                if keys.parse(kv.key) not in expired and _holds(kv, owner, policy_id)
            ]
            if not stored:
                raise self._policy_not_found(owner, policy_id)
            if len(stored) > MAX_TXN_OPS:
                raise TooManyConfigurations(
                    f"policy {policy_id} is held by {len(stored)} configurations of service "
                    f"{owner}; one update rewrites at most {MAX_TXN_OPS} configurations and "
                    f"{MAX_REQUEST_BYTES} bytes (one store txn)",
                    details={
                        "configurations": len(stored),
                        "limit": MAX_TXN_OPS,
                        "byteLimit": MAX_REQUEST_BYTES,
                    },
                )
            current = max((kv.mod_revision for kv in stored), default=0)
            if expected_revision is not None and current > expected_revision:
                raise Conflict(
                    f"expectedRevision {expected_revision} lost: a configuration holding policy "
                    f"{policy_id} was written at revision {current}; re-read and retry",
                    details={"expectedRevision": expected_revision, "revision": current},
                )
            now = self._now()
            compares, puts, updated, leases = [], [], [], []
            for kv in stored:
                record = Record.FromString(kv.value)
                held = [
                    i
                    for i, p in enumerate(record.configuration.policies)
                    if p.policy_id == policy_id
                ]
                if not held:
                    continue
                record.configuration.policies[held[0]].CopyFrom(policy)
                record.configuration.last_updated.CopyFrom(now)
                compares.append(mod_revision_is(kv.key, kv.mod_revision))
                puts.append(Put(kv.key, record.SerializeToString(), kv.lease))
                updated.append(record.configuration.service_id)
                leases.append(kv.lease)
            if not puts:
                continue  # every holder changed meanwhile: read again
            self._check_size(policy_id, owner, compares, puts)
            try:
                result = await self._store.txn(compares, puts)
            except LeaseNotFoundError as exc:
                gone = {s for s, ls in zip(updated, leases, strict=True) if ls == exc.lease_id}
                if not gone:
                    raise
                expired |= gone
                continue
            if result.succeeded:
                await self._read_your_write(result.revision)
                return pb.SidecarPolicyResponse(
                    policy=policy,
                    service_name=owner,
                    service_ids=updated,
                    revision=result.revision,
                    updated_at=now,
                    warnings=[w.to_proto() for w in warnings],
                    configurations_updated=len(updated),
                )
            if expected_revision is not None:
                raise Conflict(
                    f"a configuration holding policy {policy_id} changed concurrently; "
                    "re-read and retry",
                    details={"expectedRevision": expected_revision},
                )
        raise Conflict(f"policy {policy_id} of service {owner} changed concurrently; retry")

    def get_policy(
        self, principal: Principal, policy_id: str, service_name: str
    ) -> pb.SidecarPolicyResponse:
        """The policy as held by the most recently written configuration holding it."""
        owner = self._owner(principal, service_name)
        holding = self._index.holding(owner, policy_id)
        if not holding:
            raise self._policy_not_found(owner, policy_id)
        latest = max(holding, key=lambda r: r.revision)
        policy = next(p for p in latest.configuration.policies if p.policy_id == policy_id)
        return pb.SidecarPolicyResponse(
            policy=policy,
            service_name=owner,
            service_ids=[r.configuration.service_id for r in holding],
            revision=latest.revision,
            updated_at=latest.configuration.last_updated,
            read_revision=self._index.revision,
        )

    @staticmethod
    def _check_size(policy_id: str, owner: str, compares: list[Compare], puts: list[Put]) -> None:
        """One update is one store txn: refused, nothing written, when it exceeds the store's
        request size (counted as the store counts it) as well as when it exceeds its op count."""
        size = sum(len(p.key) + len(p.value) + OP_OVERHEAD_BYTES for p in puts)
        size += sum(len(c.key) + OP_OVERHEAD_BYTES for c in compares)
        if size > MAX_REQUEST_BYTES:
            raise TooManyConfigurations(
                f"policy {policy_id} is held by {len(puts)} configurations of service {owner} "
                f"totalling {size} bytes; one update rewrites at most {MAX_TXN_OPS} "
                f"configurations and {MAX_REQUEST_BYTES} bytes (one store txn)",
                details={
                    "configurations": len(puts),
                    "bytes": size,
                    "limit": MAX_TXN_OPS,
                    "byteLimit": MAX_REQUEST_BYTES,
                },
            )

    @staticmethod
    def _owner(principal: Principal, service_name: str) -> str:
        """The service whose policy is addressed: an admin names it, a service token is it."""
        return addressed_service(principal, service_name, InvalidSidecarPolicy, "the policies")

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _not_registered(service_id: str) -> InstanceNotRegistered:
        return InstanceNotRegistered(
            f"no instance {service_id} is registered", details={"serviceId": service_id}
        )

    @staticmethod
    def _config_not_found(service_id: str) -> SidecarResourceNotFound:
        return SidecarResourceNotFound(
            f"no sidecar configuration is stored for instance {service_id}",
            details={"serviceId": service_id},
        )

    @staticmethod
    def _policy_not_found(service_name: str, policy_id: str) -> SidecarResourceNotFound:
        return SidecarResourceNotFound(
            f"no configuration of service {service_name} holds policy {policy_id}",
            details={"serviceName": service_name, "policyId": policy_id},
        )

    async def _written(
        self, record: Record, revision: int, warnings: list[checks.Warning]
    ) -> Record:
        await self._read_your_write(revision)
        record.revision = revision
        record.version = record.configuration.version = str(revision)
        record.warnings.extend(w.to_proto() for w in warnings)
        return record

    async def _read_your_write(self, revision: int) -> None:
        """Waits until the index has applied ``revision``. A timeout is not an error (the write is
        durable) but is said and counted: reads from this replica are stale until it catches up."""
        if await self._index.wait_for(revision, READ_YOUR_WRITES_TIMEOUT):
            return
        self._index.read_your_writes_timeouts += 1
        log.warning(
            "read-your-writes: the sidecar index has not applied revision %d after %.1fs (at %d)",
            revision,
            READ_YOUR_WRITES_TIMEOUT,
            self._index.revision,
        )

    def _now(self) -> timestamp_pb2.Timestamp:
        ts = timestamp_pb2.Timestamp()
        ts.FromNanoseconds(int(self._clock.now() * 1e9))
        return ts


def _stored_form(cfg: pb.SidecarConfiguration) -> pb.SidecarConfiguration:
    """What is stored: output-only fields cleared, the private key dropped."""
    out = pb.SidecarConfiguration()
    out.CopyFrom(cfg)
    out.ClearField("version")
    out.ClearField("last_updated")
    if cfg.security.HasField("mtls"):
        out.security.mtls.ClearField("client_key")
    return out


def _holds(kv: KeyValue, service_name: str, policy_id: str) -> bool:
    """Whether the stored configuration ``kv`` belongs to ``service_name`` and holds the policy."""
    record = Record.FromString(kv.value)
    return record.service_name == service_name and any(
        p.policy_id == policy_id for p in record.configuration.policies
    )
