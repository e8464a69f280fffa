"""The one place that turns failures into HTTP: gRPC code -> status table and the error body.

Every error the gateway answers, whether it came from the backend or from the gateway itself,
has the seed's ErrorResponse shape::

    {"error": {"code": "LUCID_ERR_NNNN", "message": ..., "details": {...},
               "request_id": <uuid>, "timestamp": <RFC 3339>, "service": "lucid-cp",
               "version": <package version>}}

Backend errors carry a google.rpc.Status in the ``grpc-status-details-bin`` trailer; its
ErrorInfo.reason is the code, BadRequest becomes ``details.fieldViolations``, RetryInfo becomes
``details.retryAfterSeconds`` and the Retry-After header, PreconditionFailure becomes
``details.preconditionFailures``. Without that trailer the code falls back per gRPC code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpc
from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from gateway.codec import encode_message, enum_wire
from lucid_cp.api.lucid.common.v1 import errors_pb2

SERVICE_NAME = "lucid-cp"
STATUS_DETAILS_KEY = "grpc-status-details-bin"

_C = grpc.StatusCode

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    _C.OK: 200,
    _C.INVALID_ARGUMENT: 400,
    _C.FAILED_PRECONDITION: 400,
    _C.OUT_OF_RANGE: 400,
    _C.UNAUTHENTICATED: 401,
    _C.PERMISSION_DENIED: 403,
    _C.NOT_FOUND: 404,
    _C.ALREADY_EXISTS: 409,
    _C.ABORTED: 409,
    _C.RESOURCE_EXHAUSTED: 429,
    _C.UNIMPLEMENTED: 501,
    _C.UNAVAILABLE: 503,
    _C.DEADLINE_EXCEEDED: 504,
}
"""gRPC status code -> HTTP status; anything else is 500."""

_R = errors_pb2.ErrorReason
_FALLBACK_REASON: dict[grpc.StatusCode, int] = {
    _C.INVALID_ARGUMENT: _R.MALFORMED_REQUEST,
    _C.FAILED_PRECONDITION: _R.MALFORMED_REQUEST,
    _C.OUT_OF_RANGE: _R.MALFORMED_REQUEST,
    _C.UNAUTHENTICATED: _R.UNAUTHENTICATED,
    _C.PERMISSION_DENIED: _R.PERMISSION_DENIED,
    _C.NOT_FOUND: _R.NOT_FOUND,
    _C.ABORTED: _R.REVISION_CONFLICT,
    _C.ALREADY_EXISTS: _R.ALREADY_EXISTS,
    _C.RESOURCE_EXHAUSTED: _R.RATE_LIMITED,
    # No ErrorInfo with UNAVAILABLE: the control plane itself did not answer (down, restarting,
    # unreachable). The control plane's own "store unavailable" always carries its ErrorInfo.
    _C.UNAVAILABLE: _R.CONTROL_PLANE_UNAVAILABLE,
    _C.DEADLINE_EXCEEDED: _R.TIMEOUT,
}
"""Error code used when the backend sent no ErrorInfo; anything else is INTERNAL (1999)."""


def reason_code(reason: int) -> str:
    """The REST code of an ErrorReason value: its wire string ("LUCID_ERR_1904")."""
    code = enum_wire(errors_pb2.ErrorReason.DESCRIPTOR).encode(reason)
    return str(code)


def http_status_of(code: grpc.StatusCode) -> int:
    return HTTP_STATUS.get(code, 500)


@dataclass(slots=True)
class ApiError(Exception):
    """An error answer: HTTP status, LUCID_ERR code, message and details."""

    status: int
    code: str
    message: str
    details: dict[str, object] = field(default_factory=dict)
    retry_after: int | None = None  # seconds, for the Retry-After header
    # A well-formed request the configuration does not allow (the system's invalid-request
    # error, not MALFORMED_REQUEST, when the server reports it): an unknown enum string.
    invalid: bool = False

    def body(self, request_id: str, timestamp: datetime, version: str) -> dict[str, object]:
        error: dict[str, object] = {
            "code": self.code,
            "message": self.message,
            "details": self.details,
        }
        error["request_id"] = request_id
        error["timestamp"] = rfc3339(timestamp)
        error["service"] = SERVICE_NAME
        error["version"] = version
        return {"error": error}

    def violations(self) -> list[tuple[str, str]]:
        """The field violations in ``details``, as (field, description)."""
        found = self.details.get("fieldViolations")
        if not isinstance(found, list):
            return []
        return [(str(v["field"]), str(v["description"])) for v in found]

    def headers(self) -> dict[str, str]:
        if self.status == 401:  # RFC 6750: every 401 names the scheme it wants
            return {"WWW-Authenticate": "Bearer"}
        if self.status == 408:  # RFC 9110: the connection is closed after a 408
            return {"Connection": "close"}
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(self.retry_after)}


def rfc3339(moment: datetime) -> str:
    """UTC, second precision or milliseconds when present, with a trailing Z."""
    moment = moment.astimezone(UTC)
    if moment.microsecond:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def gateway_error(
    status: int,
    reason: int,
    message: str,
    *,
    violations: Sequence[tuple[str, str]] = (),
    details: dict[str, object] | None = None,
) -> ApiError:
    """An error the gateway itself answers (bad JSON, no route, ...)."""
    out: dict[str, object] = dict(details or {})
    if violations:
        out["fieldViolations"] = [{"field": f, "description": d} for f, d in violations]
    return ApiError(status, reason_code(reason), message, out)


def malformed(message: str, violations: Sequence[tuple[str, str]] = ()) -> ApiError:
    return gateway_error(400, _R.MALFORMED_REQUEST, message, violations=violations)


def unauthenticated(message: str) -> ApiError:
    return gateway_error(401, _R.UNAUTHENTICATED, message)


def internal_error() -> ApiError:
    return gateway_error(500, _R.INTERNAL, "internal error; quote the request id when reporting it")


def from_grpc(
    code: grpc.StatusCode,
    message: str | None,
    trailing_metadata: Sequence[tuple[str, str | bytes]] | None,
    *,
    strip_field_prefix: str = "",
) -> ApiError:
    """Maps a failed call. ``strip_field_prefix`` ("registration.") rewrites violation paths
    into the request body's own terms when the body is one field of the request."""
    status = _status_details(code, trailing_metadata)
    text = (status.message if status is not None and status.message else message) or code.name
    code_string = reason_code(_FALLBACK_REASON.get(code, _R.INTERNAL))
    details: dict[str, object] = {}
    retry_after: int | None = None
    typed = _typed_details(status)
    lucid = False  # the error carries Lucid's ErrorInfo (else: grpc's own, or a proxy's)
    for any_detail in status.details if status is not None else ():
        if any_detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            any_detail.Unpack(info)
            lucid = lucid or info.domain == "lucid"
            if info.reason:
                code_string = info.reason
            # The Struct detail has the same values with their JSON types (2, not "2").
            details.update(
                typed
                if typed is not None
                else {k: v for k, v in info.metadata.items() if k != "request_id"}
            )
        elif any_detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            any_detail.Unpack(bad)
            details["fieldViolations"] = [
                {"field": _strip(v.field, strip_field_prefix), "description": v.description}
                for v in bad.field_violations
            ]
        elif any_detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            any_detail.Unpack(retry)
            delay = retry.retry_delay.ToTimedelta().total_seconds()
            details["retryAfterSeconds"] = round(delay, 3)
            retry_after = max(1, math.ceil(delay))
        elif any_detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            any_detail.Unpack(failure)
            details["preconditionFailures"] = [
                {"type": v.type, "subject": v.subject, "description": v.description}
                for v in failure.violations
            ]
    if code == _C.RESOURCE_EXHAUSTED and not lucid:
        # grpc's own limit (metadata or message size), not Lucid's rate limiter: retrying the
        # same request cannot help, and its message would expose internal sizes.
        return ApiError(400, reason_code(_R.LIMIT_EXCEEDED), _TRANSPORT_LIMIT)
    if code == _C.RESOURCE_EXHAUSTED and retry_after is None:
        retry_after = 1  # 429 always tells the client when to come back
    return ApiError(http_status_of(code), code_string, text, details, retry_after)


_TRANSPORT_LIMIT = "the request exceeds a size limit between the gateway and the control plane"


def _typed_details(status: status_pb2.Status | None) -> dict[str, object] | None:
    """The error's details as the server packed them in a google.protobuf.Struct, if it did."""
    for any_detail in status.details if status is not None else ():
        if any_detail.Is(struct_pb2.Struct.DESCRIPTOR):
            typed = struct_pb2.Struct()
            any_detail.Unpack(typed)
            return encode_message(typed)
    return None


def _strip(path: str, prefix: str) -> str:
    if prefix and path.startswith(prefix):
        return path[len(prefix) :]
    return path


def _status_details(
    code: grpc.StatusCode, trailing_metadata: Sequence[tuple[str, str | bytes]] | None
) -> status_pb2.Status | None:
    for key, value in trailing_metadata or ():
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            return None
        # grpc_status.rpc_status applies the same consistency check.
        return status if status.code == code.value[0] else None
    return None
