"""Discovery's errors: subclasses of the generic ones, each mapped to its seed reason
(LUCID_ERR_100x) by the rows in ``STATUS_ROWS``, which the discovery module adds to the one
status table."""

from __future__ import annotations

from lucid_cp.api.lucid.common.v1 import errors_pb2
from lucid_cp.errors import AlreadyExists, InvalidArgument, NotFound

R = errors_pb2.ErrorReason


class ServiceNotFound(NotFound):
    """No such instance, or no instance of a service qualifies (LUCID_ERR_1002)."""


class ServiceAlreadyRegistered(AlreadyExists):
    """The serviceId is registered already; the existing record is untouched (LUCID_ERR_1003)."""


class InvalidServiceConfiguration(InvalidArgument):
    """A discovery request violates its declared field rules (LUCID_ERR_1004)."""


# Error class -> ErrorReason. The gRPC code comes from the generic base class's row.
STATUS_ROWS: dict[type[Exception], int] = {
    ServiceNotFound: R.SERVICE_NOT_FOUND,
    ServiceAlreadyRegistered: R.SERVICE_ALREADY_REGISTERED,
    InvalidServiceConfiguration: R.INVALID_SERVICE_CONFIGURATION,
}
