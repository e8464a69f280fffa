"""The mesh's errors: subclasses of the generic ones, each mapped to its seed reason
(LUCID_ERR_120x) by ``STATUS_ROWS``, which the mesh module adds to the one status table.

Each resource has its own invalid-request reason (the seed's 1201 traffic policy, 1202 circuit
breaker, 1203 security policy, 1204 mTLS): ``INVALID_REQUEST`` names the class per method (the
module's ``invalid_requests``), for field-rule violations; the core raises the same classes for
the write-time errors of ``lucid_cp.mesh.checks``. Not-found and already-exists errors have no
seed code: they take the generic rows (1907, 1908)."""

from __future__ import annotations

from lucid_cp.api.lucid.common.v1 import errors_pb2
from lucid_cp.api.lucid.mesh.v1 import mesh_pb2
from lucid_cp.errors import AlreadyExists, InvalidArgument, NotFound

R = errors_pb2.ErrorReason


class InvalidTrafficPolicy(InvalidArgument):
    """A traffic policy breaks a field rule or a write-time check (LUCID_ERR_1201)."""


class InvalidCircuitBreaker(InvalidArgument):
    """A circuit breaker configuration is invalid (LUCID_ERR_1202)."""


class InvalidSecurityPolicy(InvalidArgument):
    """A security policy breaks a field rule or a write-time check (LUCID_ERR_1203)."""


class InvalidMtlsConfig(InvalidArgument):
    """An mTLS configuration is invalid (LUCID_ERR_1204)."""


class MeshResourceNotFound(NotFound):
    """No such policy, circuit breaker or mTLS configuration (LUCID_ERR_1907)."""


class ServiceNotRegistered(NotFound):
    """A circuit breaker for a service no instance of which is registered (LUCID_ERR_1907)."""


class PolicyAlreadyExists(AlreadyExists):
    """The namespace holds a policy of that name; it is untouched (LUCID_ERR_1908)."""


# Error class -> ErrorReason. The gRPC code comes from the generic base class's row.
STATUS_ROWS: dict[type[Exception], int] = {
    InvalidTrafficPolicy: R.TRAFFIC_POLICY_CREATION_FAILED,
    InvalidCircuitBreaker: R.CIRCUIT_BREAKER_CONFIGURATION_INVALID,
    InvalidSecurityPolicy: R.SECURITY_POLICY_VIOLATION,
    InvalidMtlsConfig: R.MTLS_CONFIGURATION_FAILED,
}

_METHODS = mesh_pb2.DESCRIPTOR.services_by_name["MeshService"].methods_by_name
_BY_RESOURCE: dict[type[InvalidArgument], tuple[str, ...]] = {
    # Explain's invalid requests are traffic questions (1201).
    InvalidTrafficPolicy: (
        "CreateTrafficPolicy",
        "GetTrafficPolicy",
        "ReplaceTrafficPolicy",
        "DeleteTrafficPolicy",
        "ListTrafficPolicies",
        "Explain",
    ),
    InvalidCircuitBreaker: (
        "UpdateCircuitBreaker",
        "GetCircuitBreaker",
        "DeleteCircuitBreaker",
        "ListCircuitBreakers",
    ),
    InvalidSecurityPolicy: (
        "CreateSecurityPolicy",
        "GetSecurityPolicy",
        "ReplaceSecurityPolicy",
        "DeleteSecurityPolicy",
        "ListSecurityPolicies",
    ),
    InvalidMtlsConfig: ("UpdateMtls", "GetMtls"),
}
# Method full name -> the error raised when its request is invalid.
INVALID_REQUEST: dict[str, type[InvalidArgument]] = {
    _METHODS[method].full_name: error
    for error, methods in _BY_RESOURCE.items()
    for method in methods
}
