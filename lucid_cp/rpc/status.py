"""The one table from domain errors to google.rpc.Status (code, ErrorInfo reason, details).

Every error any RPC returns passes through ``StatusTable.to_rpc_status``. The generic rows below
give each generic error class its gRPC code and a generic reason; each system adds rows for its
own subclasses (a reason only: the code comes from the generic base class). Lookup walks the
exception's MRO, so the most specific row wins. Unknown exceptions become INTERNAL with no
internals; the caller logs them with the request id.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from google.protobuf import any_pb2, duration_pb2, struct_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from lucid_cp.api.lucid.common.v1 import errors_pb2, options_pb2
from lucid_cp.errors import (
    AlreadyExists,
    Conflict,
    InvalidArgument,
    LucidError,
    MalformedRequest,
    MethodNotAllowed,
    NotFound,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from lucid_cp.reasons import reason_string
from lucid_cp.store.base import (
    MAX_REQUEST_BYTES,
    MAX_TXN_OPS,
    RequestTooLargeError,
    StoreUnavailableError,
    TooManyOpsError,
)

DOMAIN = "lucid"
R = errors_pb2.ErrorReason
# Seconds a client is told to wait before retrying a call that found the store unavailable.
STORE_RETRY_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Row:
    code: int
    reason: int
    # The message clients see for errors that are not LucidErrors (store errors): their own
    # text may name internal endpoints or quote the backend, so it is logged, never sent.
    public_message: str = ""


# Generic error class -> (gRPC code, generic reason). No system-specific defaults here.
GENERIC_ROWS: dict[type[Exception], Row] = {
    InvalidArgument: Row(code_pb2.INVALID_ARGUMENT, R.MALFORMED_REQUEST),
    MalformedRequest: Row(code_pb2.INVALID_ARGUMENT, R.MALFORMED_REQUEST),
    NotFound: Row(code_pb2.NOT_FOUND, R.NOT_FOUND),
    AlreadyExists: Row(code_pb2.ALREADY_EXISTS, R.ALREADY_EXISTS),
    Conflict: Row(code_pb2.ABORTED, R.REVISION_CONFLICT),
    Unauthenticated: Row(code_pb2.UNAUTHENTICATED, R.UNAUTHENTICATED),
    PermissionDenied: Row(code_pb2.PERMISSION_DENIED, R.PERMISSION_DENIED),
    MethodNotAllowed: Row(code_pb2.PERMISSION_DENIED, R.METHOD_NOT_ALLOWED),
    RateLimited: Row(code_pb2.RESOURCE_EXHAUSTED, R.RATE_LIMITED),
    Unavailable: Row(code_pb2.UNAVAILABLE, R.CONTROL_PLANE_UNAVAILABLE),
    StoreUnavailableError: Row(
        code_pb2.UNAVAILABLE, R.STORE_UNAVAILABLE, "the state store is unavailable; retry later"
    ),
    # etcd's limits, enforced by every store backend: the request is too big, not retryable.
    TooManyOpsError: Row(
        code_pb2.INVALID_ARGUMENT,
        R.LIMIT_EXCEEDED,
        f"the request needs more than {MAX_TXN_OPS} store operations in one transaction",
    ),
    RequestTooLargeError: Row(
        code_pb2.INVALID_ARGUMENT,
        R.LIMIT_EXCEEDED,
        f"the request is larger than the store accepts ({MAX_REQUEST_BYTES} bytes)",
    ),
}
_INTERNAL = Row(code_pb2.INTERNAL, R.INTERNAL)


def _declared(reason: int) -> bool:
    """A reason with a wire string ("LUCID_ERR_NNNN"): never 0, never an unknown number."""
    value = errors_pb2.ErrorReason.DESCRIPTOR.values_by_number.get(reason)
    return value is not None and bool(value.GetOptions().Extensions[options_pb2.wire])


class StatusTable:
    """Generic rows plus every system's ``{subclass: reason}`` rows, checked when built: a
    system row must name a subclass of a generic error (that is where its code comes from)."""

    def __init__(self, system_rows: Iterable[Mapping[type[Exception], int]] = ()) -> None:
        self._rows: dict[type[Exception], Row] = dict(GENERIC_ROWS)
        for rows in system_rows:
            for cls, reason in rows.items():
                base = self._lookup(cls)
                if base is _INTERNAL:
                    raise ValueError(f"{cls.__name__} does not derive from a generic error class")
                if cls in self._rows:
                    raise ValueError(f"{cls.__name__} is mapped twice")
                if not _declared(reason):
                    raise ValueError(f"{cls.__name__}: {reason} is not a declared error reason")
                self._rows[cls] = Row(base.code, reason, base.public_message)

    def _lookup(self, cls: type[BaseException]) -> Row:
        for klass in cls.__mro__:
            mapping = self._rows.get(klass)
            if mapping is not None:
                return mapping
        return _INTERNAL

    def is_known(self, exc: Exception) -> bool:
        return self._lookup(type(exc)) is not _INTERNAL

    def to_rpc_status(self, exc: Exception, request_id: str) -> status_pb2.Status:
        mapping = self._lookup(type(exc))
        if mapping is _INTERNAL:
            message = f"internal error (request id {request_id})"
            details: dict[str, object] = {}
        elif isinstance(exc, LucidError):
            message, details = exc.message, exc.details
        else:
            message, details = mapping.public_message or type(exc).__name__, {}
        metadata = {"request_id": request_id}
        metadata.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in details.items()})
        status = status_pb2.Status(code=mapping.code, message=message)
        status.details.append(
            _pack(
                error_details_pb2.ErrorInfo(
                    reason=reason_string(mapping.reason), domain=DOMAIN, metadata=metadata
                )
            )
        )
        typed = _typed(details)
        if typed is not None:
            status.details.append(_pack(typed))
        if isinstance(exc, (InvalidArgument, MalformedRequest)) and exc.violations:
            bad = error_details_pb2.BadRequest()
            for v in exc.violations:
                bad.field_violations.add(field=v.field, description=v.description)
            status.details.append(_pack(bad))
        retry_after = _retry_after(exc)
        if retry_after is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(retry_after * 1e9))
            status.details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
        if isinstance(exc, Conflict):
            failure = error_details_pb2.PreconditionFailure()
            failure.violations.add(
                type="REVISION", subject=str(exc.details.get("key", "")), description=exc.message
            )
            status.details.append(_pack(failure))
        return status


def _typed(details: Mapping[str, object]) -> struct_pb2.Struct | None:
    """The details again, with their JSON types (ErrorInfo metadata values are strings only):
    the REST gateway shows ``"registeredRevision": 2``, not ``"2"``."""
    if not details:
        return None
    typed = struct_pb2.Struct()
    typed.update(json.loads(json.dumps(details, default=str)))
    return typed


def _retry_after(exc: Exception) -> float | None:
    if isinstance(exc, RateLimited):
        return exc.retry_after
    if isinstance(exc, StoreUnavailableError):
        return STORE_RETRY_SECONDS
    return None


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed
