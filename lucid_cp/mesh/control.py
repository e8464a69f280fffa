"""The mesh control core: writes of traffic and security policies, circuit breakers and the
mesh-wide mTLS settings, the reads the index serves, and Explain. Pure asyncio over narrow store
interfaces and the Clock; it never imports grpc.

Every write is one store txn: create-only for a new policy, compare-and-swap on the record's
mod_revision for a replacement (against ``expectedRevision`` when the caller gives one), a
guarded delete. Then it waits, briefly, until the index has applied it, so the caller reads its
own write from the same replica. Write-time errors (``checks``) raise the resource's
invalid-request error with field violations; warnings come back in the response.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from google.protobuf import timestamp_pb2

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2
from lucid_cp.api.lucid.mesh.v1 import mesh_pb2 as pb
from lucid_cp.clock import Clock
from lucid_cp.errors import Conflict, FieldViolation, InvalidArgument
from lucid_cp.mesh import checks, keys
from lucid_cp.mesh.defaults import DestinationDefaults
from lucid_cp.mesh.engine import Request, decide, to_explain_response
from lucid_cp.mesh.errors import (
    InvalidCircuitBreaker,
    InvalidMtlsConfig,
    InvalidSecurityPolicy,
    InvalidTrafficPolicy,
    MeshResourceNotFound,
    PolicyAlreadyExists,
    ServiceNotRegistered,
)
from lucid_cp.mesh.index import MeshIndex
from lucid_cp.mesh.selectors import CLUSTERS, PLANES, SelectorError, Workload, canonical
from lucid_cp.store.base import (
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    Get,
    KeyReader,
    KeyValue,
    KeyWriter,
    Put,
    key_missing,
    mod_revision_is,
)

log = logging.getLogger("lucid_cp.mesh.control")

READ_YOUR_WRITES_TIMEOUT = 2.0
CAS_ATTEMPTS = 8


class MeshStore(KeyReader, KeyWriter, Protocol):
    """The store methods the core uses: reads and txns (never leases, watch or compact)."""


class Services(Protocol):
    """What the core needs of discovery: the registered instances (the discovery index)."""

    def of_service(self, service_name: str) -> Mapping[str, discovery_pb2.ServiceInstance]: ...

    def ordered(self, service_name: str = "") -> Iterator[discovery_pb2.ServiceInstance]: ...


def _exists(key: bytes) -> Compare:
    return Compare(key, CompareTarget.CREATE, CompareOp.GREATER, 0)


def _canonical(selector: str) -> str:
    try:
        return canonical(selector)
    except SelectorError:
        return selector  # matches no stored (canonical) selector


def _raise_invalid(error: type[InvalidArgument], violations: list[FieldViolation]) -> None:
    if violations:
        raise error("; ".join(f"{v.field}: {v.description}" for v in violations), violations)


Policy = TypeVar("Policy", pb.TrafficPolicy, pb.SecurityPolicy)
Response = TypeVar("Response", pb.TrafficPolicyResponse, pb.SecurityPolicyResponse)
# Any stored record (the read response of its resource).
R = TypeVar(
    "R",
    pb.TrafficPolicyResponse,
    pb.SecurityPolicyResponse,
    pb.CircuitBreakerResponse,
    pb.MTLSConfigResponse,
)


@dataclass(frozen=True)
class _PolicyKind(Generic[Policy, Response]):
    """What differs between traffic and security policies."""

    kind: keys.Kind
    what: str  # "traffic policy"
    response: type[Response]
    # The stored record of a policy: (policy, createdAt, updatedAt) -> record.
    record: Callable[[Policy, timestamp_pb2.Timestamp, timestamp_pb2.Timestamp], Response]
    policy_of: Callable[[Response], Policy]
    invalid: type[InvalidArgument]
    errors: Callable[[Policy, str], list[FieldViolation]]
    warnings: Callable[[Policy, Sequence[Policy], Sequence[Workload]], list[checks.Warning]]
    one: Callable[[MeshIndex, str, str], Response | None]
    every: Callable[[MeshIndex], list[Response]]


TRAFFIC: _PolicyKind[pb.TrafficPolicy, pb.TrafficPolicyResponse] = _PolicyKind(
    keys.Kind.TRAFFIC,
    "traffic policy",
    pb.TrafficPolicyResponse,
    lambda p, c, u: pb.TrafficPolicyResponse(policy=p, created_at=c, updated_at=u),
    lambda r: r.policy,
    InvalidTrafficPolicy,
    checks.traffic_policy_errors,
    checks.traffic_policy_warnings,
    MeshIndex.traffic_policy,
    MeshIndex.traffic_policies,
)
SECURITY: _PolicyKind[pb.SecurityPolicy, pb.SecurityPolicyResponse] = _PolicyKind(
    keys.Kind.SECURITY,
    "security policy",
    pb.SecurityPolicyResponse,
    lambda p, c, u: pb.SecurityPolicyResponse(policy=p, created_at=c, updated_at=u),
    lambda r: r.policy,
    InvalidSecurityPolicy,
    checks.security_policy_errors,
    checks.security_policy_warnings,
    MeshIndex.security_policy,
    MeshIndex.security_policies,
)


class MeshControl:
    def __init__(self, store: MeshStore, index: MeshIndex, services: Services, clock: Clock):
        self._store = store
        self._index = index
        self._services = services
        self._clock = clock
        self._defaults: DestinationDefaults | None = None

    def use_destination_defaults(self, defaults: DestinationDefaults | None) -> None:
        """What Explain reads besides the mesh's resources: the deny-all destinations and the
        sources' retry and timeout settings (set by a system built on the mesh, e.g. the
        sidecar's configurations). None (the default): neither, the mesh default is allow."""
        self._defaults = defaults

    @property
    def revision(self) -> int:
        """The store revision the index has applied (what a read now is read at)."""
        return self._index.revision

    # -- policies ----------------------------------------------------------------------------

    async def create_policy(self, k: _PolicyKind[Policy, Response], policy: Policy) -> Response:
        """Create-only: ALREADY_EXISTS when the namespace holds a policy of that name."""
        _raise_invalid(k.invalid, k.errors(policy, "policy."))
        checks.canonicalize(policy)
        warnings = self._policy_warnings(k, policy)
        key = keys.policy_key(k.kind, policy.namespace, policy.name)
        now = self._now()
        record = k.record(policy, now, now)
        result = await self._store.txn(
            [key_missing(key)], [Put(key, record.SerializeToString())], [Get(key)]
        )
        if not result.succeeded:
            details: dict[str, object] = {"namespace": policy.namespace, "name": policy.name}
            existing = result.responses[0]
            if isinstance(existing, KeyValue):
                details["revision"] = existing.mod_revision
            raise PolicyAlreadyExists(
                f"{k.what} {policy.namespace}/{policy.name} already exists", details=details
            )
        return await self._written(record, result.revision, warnings)

    async def replace_policy(
        self,
        k: _PolicyKind[Policy, Response],
        name: str,
        namespace: str,
        policy: Policy,
        expected_revision: int | None,
    ) -> Response:
        """Replaces a stored policy (NOT_FOUND when there is none), keeping its createdAt."""
        # The body repeats the addressed name and namespace. An omitted body namespace cannot be
        # told from "default" here (the declared default is applied before), so it is "default".
        mismatched = [
            FieldViolation(
                f"policy.{field}", f"must equal the {field} addressed ({wanted!r}){note}"
            )
            for field, given, wanted, note in (
                ("name", policy.name, name, ""),
                (
                    "namespace",
                    policy.namespace,
                    namespace,
                    ": the body repeats it (omitted, it is 'default')",
                ),
            )
            if given != wanted
        ]
        _raise_invalid(k.invalid, mismatched + k.errors(policy, "policy."))
        checks.canonicalize(policy)
        warnings = self._policy_warnings(k, policy)
        key = keys.policy_key(k.kind, namespace, name)

        def build(existing: Response | None) -> Response:
            assert existing is not None  # _swap raised the not-found first
            return k.record(policy, existing.created_at, self._now())

        record, revision = await self._swap(
            key,
            k.response.FromString,
            build,
            expected_revision,
            missing=lambda: self._policy_not_found(k, namespace, name),
        )
        return await self._written(record, revision, warnings)

    async def delete_policy(
        self, k: _PolicyKind[Policy, Response], namespace: str, name: str
    ) -> int:
        key = keys.policy_key(k.kind, namespace, name)
        return await self._delete(key, lambda: self._policy_not_found(k, namespace, name))

    def get_policy(self, k: _PolicyKind[Policy, Response], namespace: str, name: str) -> Response:
        found = k.one(self._index, namespace, name)
        if found is None:
            raise self._policy_not_found(k, namespace, name)
        return self._read(found)

    def list_policies(
        self,
        k: _PolicyKind[Policy, Response],
        request: pb.ListTrafficPoliciesRequest | pb.ListSecurityPoliciesRequest,
    ) -> tuple[list[Response], int]:
        """(one page of the matching policies, the total that match)."""

        # Stored selectors are canonical (checks.canonicalize): so is the filter, when it parses.
        source, destination = _canonical(request.source), _canonical(request.destination)

        def match(r: Response) -> bool:
            p = k.policy_of(r)
            return (
                (not request.namespace or p.namespace == request.namespace)
                and (not source or p.source == source)
                and (not destination or p.destination == destination)
                and (not request.HasField("enabled") or p.enabled == request.enabled)
            )

        matching = [r for r in k.every(self._index) if match(r)]
        return matching[request.offset : request.offset + request.limit], len(matching)

    def _policy_warnings(
        self, k: _PolicyKind[Policy, Response], policy: Policy
    ) -> list[checks.Warning]:
        existing = [k.policy_of(r) for r in k.every(self._index)]
        return k.warnings(policy, existing, self._workloads())

    @staticmethod
    def _policy_not_found(
        k: _PolicyKind[Policy, Response], namespace: str, name: str
    ) -> MeshResourceNotFound:
        return MeshResourceNotFound(
            f"no {k.what} {namespace}/{name}", details={"namespace": namespace, "name": name}
        )

    # -- circuit breakers --------------------------------------------------------------------

    async def update_circuit_breaker(
        self, service_name: str, config: pb.CircuitBreakerConfig, expected_revision: int | None
    ) -> pb.CircuitBreakerResponse:
        """Creates or replaces the breaker of a destination with registered instances."""
        _raise_invalid(InvalidCircuitBreaker, checks.circuit_breaker_errors(config, "config."))
        if not self._services.of_service(service_name):
            raise ServiceNotRegistered(
                f"no instance of service {service_name} is registered",
                details={"serviceName": service_name},
            )

        def build(_: pb.CircuitBreakerResponse | None) -> pb.CircuitBreakerResponse:
            return pb.CircuitBreakerResponse(
                service_name=service_name, config=config, updated_at=self._now()
            )

        key = keys.circuit_breaker_key(service_name)
        record, revision = await self._swap(
            key, pb.CircuitBreakerResponse.FromString, build, expected_revision
        )
        return await self._written(record, revision, [])

    async def delete_circuit_breaker(self, service_name: str) -> int:
        return await self._delete(
            keys.circuit_breaker_key(service_name), lambda: self._breaker_not_found(service_name)
        )

    def get_circuit_breaker(self, service_name: str) -> pb.CircuitBreakerResponse:
        found = self._index.circuit_breaker(service_name)
        if found is None:
            raise self._breaker_not_found(service_name)
        return self._read(found)

    def list_circuit_breakers(
        self, request: pb.ListCircuitBreakersRequest
    ) -> tuple[list[pb.CircuitBreakerResponse], int]:
        every = self._index.circuit_breakers()
        return every[request.offset : request.offset + request.limit], len(every)

    @staticmethod
    def _breaker_not_found(service_name: str) -> MeshResourceNotFound:
        return MeshResourceNotFound(
            f"no circuit breaker is configured for service {service_name}",
            details={"serviceName": service_name},
        )

    # -- mTLS --------------------------------------------------------------------------------

    async def update_mtls(
        self, config: pb.MTLSConfig, expected_revision: int | None
    ) -> pb.MTLSConfigResponse:
        _raise_invalid(InvalidMtlsConfig, checks.mtls_errors(config, "config."))

        def build(_: pb.MTLSConfigResponse | None) -> pb.MTLSConfigResponse:
            return pb.MTLSConfigResponse(config=config, updated_at=self._now())

        record, revision = await self._swap(
            keys.MTLS_KEY, pb.MTLSConfigResponse.FromString, build, expected_revision
        )
        return await self._written(record, revision, [])

    def get_mtls(self) -> pb.MTLSConfigResponse:
        found = self._index.mtls()
        if found is None:
            raise MeshResourceNotFound("mTLS has not been configured")
        return self._read(found)

    # -- Explain -----------------------------------------------------------------------------

    def explain(self, request: pb.ExplainRequest) -> pb.ExplainResponse:
        config, revision = self._index.config(self._defaults)
        return to_explain_response(decide(Request.from_proto(request), config), config, revision)

    # -- the write and read steps ------------------------------------------------------------

    async def _swap(
        self,
        key: bytes,
        decode: Callable[[bytes], R],
        build: Callable[[R | None], R],
        expected_revision: int | None,
        *,
        missing: Callable[[], Exception] | None = None,
    ) -> tuple[R, int]:
        """Read, ``build`` the new record from the stored one (None: absent), compare-and-swap on
        what was read. ``missing``: replace-only, its error when nothing is stored (before any
        revision check). With ``expected_revision`` the stored record must be at it (Conflict
        otherwise, also when nothing is stored and ``missing`` is None); without, a lost race is
        retried."""
        for _ in range(CAS_ATTEMPTS):
            kv = await self._store.get(key)
            if kv is None and missing is not None:
                raise missing()
            current = kv.mod_revision if kv is not None else 0
            if expected_revision is not None and current != expected_revision:
                raise self._conflict(key, expected_revision, current)
            record = build(decode(kv.value) if kv is not None else None)
            guard = mod_revision_is(key, current) if kv is not None else key_missing(key)
            result = await self._store.txn([guard], [Put(key, record.SerializeToString())])
            if result.succeeded:
                return record, result.revision
        raise Conflict(f"{key.decode()} changed concurrently; retry", details={"key": key.decode()})

    @staticmethod
    def _conflict(key: bytes, expected: int, current: int) -> Conflict:
        now = f"at revision {current}" if current else "absent"
        return Conflict(
            f"expectedRevision {expected} lost: the stored configuration is {now}; re-read and retry",
            details={"key": key.decode(), "expectedRevision": expected, "revision": current},
        )

    async def _delete(self, key: bytes, not_found: Callable[[], Exception]) -> int:
        result = await self._store.txn([_exists(key)], [Delete(key)])
        if not result.succeeded:
            raise not_found()
        await self._read_your_write(result.revision)
        return result.revision

    async def _written(self, record: R, revision: int, warnings: list[checks.Warning]) -> R:
        await self._read_your_write(revision)
        record.revision = revision
        record.warnings.extend(w.to_proto() for w in warnings)
        return record

    def _read(self, cached: R) -> R:
        out = type(cached)()
        out.CopyFrom(cached)  # the cached one is shared and immutable
        out.read_revision = self._index.revision
        return out

    async def _read_your_write(self, revision: int) -> None:
        """Waits until the index has applied ``revision``. A timeout is not an error (the write is
        durable) but is said and counted: reads from this replica are stale until it catches up."""
        if await self._index.wait_for(revision, READ_YOUR_WRITES_TIMEOUT):
            return
        self._index.read_your_writes_timeouts += 1
        log.warning(
            "read-your-writes: the mesh index has not applied revision %d after %.1fs (at %d)",
            revision,
            READ_YOUR_WRITES_TIMEOUT,
            self._index.revision,
        )

    def _workloads(self) -> list[Workload]:
        """The registered services as selectors see them (one per name and labels)."""
        seen = {
            Workload(i.service_name, CLUSTERS.get(i.cluster, ""), PLANES.get(i.plane, ""))
            for i in self._services.ordered()
        }
        return sorted(seen, key=lambda w: (w.name, w.cluster, w.plane))

    def _now(self) -> timestamp_pb2.Timestamp:
        ts = timestamp_pb2.Timestamp()
        ts.FromNanoseconds(int(self._clock.now() * 1e9))
        return ts
