"""The sidecar system's errors: subclasses of the generic ones, each mapped to its seed reason
by ``STATUS_ROWS``, which the sidecar module adds to the one status table.

Invalid configurations are LUCID_ERR_1101, or 1103 when only routing is at fault (every
violation under ``configuration.routing.``, ``invalid_configuration``); invalid policies
(UpdateSidecarPolicy, GetSidecarPolicy) 1102: ``INVALID_REQUEST`` names the error per method (the
module's ``invalid_requests``) for field-rule violations, and the core raises the same errors for
the write-time checks of ``lucid_cp.sidecar.checks``. An instance that is not
registered is discovery's 1002; a configuration or policy that is not stored has no seed code
(1907)."""

from __future__ import annotations

from lucid_cp.api.lucid.common.v1 import errors_pb2
from lucid_cp.api.lucid.sidecar.v1 import sidecar_pb2
from lucid_cp.errors import FieldViolation, InvalidArgument, InvalidRequestError, NotFound

R = errors_pb2.ErrorReason


class InvalidSidecarConfiguration(InvalidArgument):
    """A sidecar configuration breaks a field rule or a write-time check (LUCID_ERR_1101)."""


class InvalidRoutingConfiguration(InvalidSidecarConfiguration):
    """Only the routing section is at fault (LUCID_ERR_1103)."""


class InvalidSidecarPolicy(InvalidArgument):
    """A sidecar policy breaks a field rule or a write-time check (LUCID_ERR_1102)."""


class InstanceNotRegistered(NotFound):
    """The serviceId names no registered instance (LUCID_ERR_1002, as discovery's)."""


class SidecarResourceNotFound(NotFound):
    """No configuration stored for the instance, or no such policy (LUCID_ERR_1907)."""


class TooManyConfigurations(InvalidArgument):
    """A policy update would touch more configurations than one store txn holds (1911)."""


# Error class -> ErrorReason. The gRPC code comes from the generic base class's row.
STATUS_ROWS: dict[type[Exception], int] = {
    InvalidSidecarConfiguration: R.SIDECAR_CONFIGURATION_FAILED,
    InvalidRoutingConfiguration: R.ROUTING_CONFIGURATION_INVALID,
    InvalidSidecarPolicy: R.POLICY_VALIDATION_FAILED,
    InstanceNotRegistered: R.SERVICE_NOT_FOUND,
    TooManyConfigurations: R.LIMIT_EXCEEDED,
}

ROUTING_PREFIX = "configuration.routing."


def invalid_configuration(
    message: str, violations: list[FieldViolation]
) -> InvalidSidecarConfiguration:
    """1103 when every violation is in the routing section, 1101 otherwise: the same rule for
    declared field rules (the interceptor) and write-time checks (the core)."""
    routing_only = bool(violations) and all(v.field.startswith(ROUTING_PREFIX) for v in violations)
    error = InvalidRoutingConfiguration if routing_only else InvalidSidecarConfiguration
    return error(message, violations)


_METHODS = sidecar_pb2.DESCRIPTOR.services_by_name["SidecarService"].methods_by_name
# Method full name -> the error raised when its request breaks a declared rule (the others
# take the module's ``invalid_request``, InvalidSidecarConfiguration).
INVALID_REQUEST: dict[str, InvalidRequestError] = {
    _METHODS["ConfigureSidecar"].full_name: invalid_configuration,
    **{
        _METHODS[m].full_name: InvalidSidecarPolicy
        for m in ("UpdateSidecarPolicy", "GetSidecarPolicy")
    },
}
