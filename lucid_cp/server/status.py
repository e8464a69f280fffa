"""The one table from domain errors to google.rpc.Status (code, ErrorInfo reason, details).

Every error any RPC returns passes through ``to_rpc_status``. Unknown exceptions become INTERNAL
with no internals; the caller logs them with the request id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from lucid_cp.api.lucid.common.v1 import errors_pb2, options_pb2
from lucid_cp.errors import (
    AlreadyExists,
    Conflict,
    DeadlineExceeded,
    InvalidArgument,
    LucidError,
    MalformedRequest,
    NotFound,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from lucid_cp.store.base import StoreUnavailableError

DOMAIN = "lucid"
R = errors_pb2.ErrorReason


@dataclass(frozen=True, slots=True)
class _Mapping:
    code: int
    reason: int


# Error class -> (gRPC code, default reason). A LucidError may carry its own reason.
TABLE: dict[type[Exception], _Mapping] = {
    InvalidArgument: _Mapping(code_pb2.INVALID_ARGUMENT, R.MALFORMED_REQUEST),
    MalformedRequest: _Mapping(code_pb2.INVALID_ARGUMENT, R.MALFORMED_REQUEST),
    NotFound: _Mapping(code_pb2.NOT_FOUND, R.NOT_FOUND),
    AlreadyExists: _Mapping(code_pb2.ALREADY_EXISTS, R.SERVICE_ALREADY_REGISTERED),
    Conflict: _Mapping(code_pb2.ABORTED, R.REVISION_CONFLICT),
    Unauthenticated: _Mapping(code_pb2.UNAUTHENTICATED, R.UNAUTHENTICATED),
    PermissionDenied: _Mapping(code_pb2.PERMISSION_DENIED, R.PERMISSION_DENIED),
    RateLimited: _Mapping(code_pb2.RESOURCE_EXHAUSTED, R.RATE_LIMITED),
    Unavailable: _Mapping(code_pb2.UNAVAILABLE, R.STORE_UNAVAILABLE),
    StoreUnavailableError: _Mapping(code_pb2.UNAVAILABLE, R.STORE_UNAVAILABLE),
    DeadlineExceeded: _Mapping(code_pb2.DEADLINE_EXCEEDED, R.DISCOVERY_TIMEOUT),
}
_INTERNAL = _Mapping(code_pb2.INTERNAL, R.INTERNAL)

# Reason for request-validation failures, by proto package of the called service.
VALIDATION_REASON_BY_PACKAGE: dict[str, int] = {
    "lucid.discovery.v1": R.INVALID_SERVICE_CONFIGURATION,
}


def reason_string(reason: int) -> str:
    """The wire string of an ErrorReason ("LUCID_ERR_1002"), read from its descriptor."""
    value = errors_pb2.ErrorReason.DESCRIPTOR.values_by_number[reason]
    return str(value.GetOptions().Extensions[options_pb2.wire])


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def _lookup(exc: Exception) -> _Mapping:
    for cls in type(exc).__mro__:
        mapping = TABLE.get(cls)  # type: ignore[call-overload]
        if mapping is not None:
            return mapping
    return _INTERNAL


def is_known(exc: Exception) -> bool:
    return _lookup(exc) is not _INTERNAL


def to_rpc_status(exc: Exception, request_id: str) -> status_pb2.Status:
    mapping = _lookup(exc)
    reason = mapping.reason
    if isinstance(exc, LucidError) and exc.reason:
        reason = exc.reason
    if mapping is _INTERNAL:
        message = f"internal error (request id {request_id})"
        details: dict[str, object] = {}
    elif isinstance(exc, LucidError):
        message, details = exc.message, exc.details
    else:
        message, details = str(exc) or type(exc).__name__, {}
    metadata = {"request_id": request_id}
    metadata.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in details.items()})
    status = status_pb2.Status(code=mapping.code, message=message)
    status.details.append(
        _pack(
            error_details_pb2.ErrorInfo(
                reason=reason_string(reason), domain=DOMAIN, metadata=metadata
            )
        )
    )
    if isinstance(exc, InvalidArgument) and exc.violations:
        bad = error_details_pb2.BadRequest()
        for v in exc.violations:
            bad.field_violations.add(field=v.field, description=v.description)
        status.details.append(_pack(bad))
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None or isinstance(exc, StoreUnavailableError):
        seconds = float(retry_after if retry_after is not None else 1.0)
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(seconds * 1e9))
        status.details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    if isinstance(exc, Conflict):
        failure = error_details_pb2.PreconditionFailure()
        failure.violations.add(
            type="REVISION", subject=str(exc.details.get("key", "")), description=exc.message
        )
        status.details.append(_pack(failure))
    return status
