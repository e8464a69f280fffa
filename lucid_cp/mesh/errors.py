"""The mesh's errors: subclasses of the generic ones, each mapped to its seed reason
(LUCID_ERR_120x) by ``STATUS_ROWS``, for the one status table once the mesh is served.

Each write has its own invalid-request reason (the seed's 1201 traffic policy, 1202 circuit
breaker, 1203 security policy, 1204 mTLS): ``INVALID_REQUEST`` names the class per request
message, for field-rule violations and for the write-time errors of ``lucid_cp.mesh.checks``."""

from __future__ import annotations

from lucid_cp.api.lucid.common.v1 import errors_pb2
from lucid_cp.api.lucid.mesh.v1 import mesh_pb2
from lucid_cp.errors import InvalidArgument

R = errors_pb2.ErrorReason


class InvalidTrafficPolicy(InvalidArgument):
    """A traffic policy breaks a field rule or a write-time check (LUCID_ERR_1201)."""


class InvalidCircuitBreaker(InvalidArgument):
    """A circuit breaker configuration is invalid (LUCID_ERR_1202)."""


class InvalidSecurityPolicy(InvalidArgument):
    """A security policy breaks a field rule or a write-time check (LUCID_ERR_1203)."""


class InvalidMtlsConfig(InvalidArgument):
    """An mTLS configuration is invalid (LUCID_ERR_1204)."""


# Error class -> ErrorReason. The gRPC code comes from the generic base class's row.
STATUS_ROWS: dict[type[Exception], int] = {
    InvalidTrafficPolicy: R.TRAFFIC_POLICY_CREATION_FAILED,
    InvalidCircuitBreaker: R.CIRCUIT_BREAKER_CONFIGURATION_INVALID,
    InvalidSecurityPolicy: R.SECURITY_POLICY_VIOLATION,
    InvalidMtlsConfig: R.MTLS_CONFIGURATION_FAILED,
}

# Request message -> the error raised when it is invalid. Explain's invalid requests are traffic
# questions (1201).
INVALID_REQUEST: dict[str, type[InvalidArgument]] = {
    mesh_pb2.CreateTrafficPolicyRequest.DESCRIPTOR.full_name: InvalidTrafficPolicy,
    mesh_pb2.UpdateCircuitBreakerRequest.DESCRIPTOR.full_name: InvalidCircuitBreaker,
    mesh_pb2.CreateSecurityPolicyRequest.DESCRIPTOR.full_name: InvalidSecurityPolicy,
    mesh_pb2.UpdateMtlsRequest.DESCRIPTOR.full_name: InvalidMtlsConfig,
    mesh_pb2.ExplainRequest.DESCRIPTOR.full_name: InvalidTrafficPolicy,
}
