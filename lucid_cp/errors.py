"""Generic domain errors raised by the cores. They know nothing about gRPC or HTTP; the one
mapping to google.rpc.Status lives in lucid_cp.rpc.status, which every system extends with rows
for its own subclasses (``lucid_cp/<system>/errors.py``): a raise site names a class, never a
reason code."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str  # proto field path in lowerCamelCase JSON names, e.g. "registration.endpoint.port"
    description: str


class LucidError(Exception):
    """Base of every domain error. ``details`` is a small JSON-able dict shown to the caller."""

    def __init__(self, message: str, *, details: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, object] = details or {}


class InvalidArgument(LucidError):
    def __init__(
        self,
        message: str,
        violations: list[FieldViolation] | None = None,
        *,
        details: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message, details=details)
        self.violations = violations or []


# What a method raises for a request breaking its declared field rules: an InvalidArgument
# subclass, or a callable choosing one from the violations (``(message, violations) -> error``).
InvalidRequestError = Callable[[str, list[FieldViolation]], InvalidArgument]


class MalformedRequest(LucidError):
    """The request could not be decoded at all (bad protobuf, bad JSON); ``violations`` name
    the offending fields where known (the REST gateway's JSON decoding knows them)."""

    def __init__(self, message: str, violations: list[FieldViolation] | None = None) -> None:
        super().__init__(message)
        self.violations = violations or []


class NotFound(LucidError):
    pass


class AlreadyExists(LucidError):
    pass


class Conflict(LucidError):
    """A compare-and-swap lost; the caller may re-read and retry."""


class Unauthenticated(LucidError):
    pass


class PermissionDenied(LucidError):
    pass


class RateLimited(LucidError):
    def __init__(self, bucket: str, retry_after: float) -> None:
        super().__init__(
            f"rate limit exceeded for {bucket}; retry in {retry_after:.1f}s",
            details={"bucket": bucket, "retryAfterSeconds": round(retry_after, 3)},
        )
        self.bucket = bucket
        self.retry_after = retry_after


class Unavailable(LucidError):
    """This control plane cannot serve the call now (it is shutting down, or it has not caught
    up with the store yet): retry, on another replica if there is one."""


class MethodNotAllowed(LucidError):
    """The called method declares no policy: refused, fail closed."""
