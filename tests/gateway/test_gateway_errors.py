"""gRPC failures -> HTTP: the status table, google.rpc.Status details, fallbacks, body shape."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2, struct_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from gateway.errors import HTTP_STATUS, from_grpc, http_status_of, malformed, rfc3339

C = grpc.StatusCode


def trailer(code: int, message: str, *details: object) -> list[tuple[str, str | bytes]]:
    packed = []
    for detail in details:
        item = any_pb2.Any()
        item.Pack(detail)  # type: ignore[arg-type]
        packed.append(item)
    status = status_pb2.Status(code=code, message=message, details=packed)
    return [("grpc-status-details-bin", status.SerializeToString()), ("x-request-id", "r")]


@pytest.mark.parametrize(
    ("code", "http"),
    [
        (C.INVALID_ARGUMENT, 400),
        (C.FAILED_PRECONDITION, 400),
        (C.OUT_OF_RANGE, 400),
        (C.UNAUTHENTICATED, 401),
        (C.PERMISSION_DENIED, 403),
        (C.NOT_FOUND, 404),
        (C.ALREADY_EXISTS, 409),
        (C.ABORTED, 409),
        (C.RESOURCE_EXHAUSTED, 429),
        (C.UNIMPLEMENTED, 501),
        (C.UNAVAILABLE, 503),
        (C.DEADLINE_EXCEEDED, 504),
        (C.INTERNAL, 500),
        (C.UNKNOWN, 500),
        (C.DATA_LOSS, 500),
        (C.CANCELLED, 500),
    ],
)
def test_status_table(code: grpc.StatusCode, http: int) -> None:
    assert http_status_of(code) == http
    info = error_details_pb2.ErrorInfo(reason="LUCID_ERR_1903", domain="lucid")
    assert from_grpc(code, "x", trailer(code.value[0], "x", info)).status == http


def test_every_grpc_code_maps_to_an_http_error() -> None:
    for code in C:
        status = http_status_of(code)
        assert status == HTTP_STATUS.get(code, 500)
        assert code == C.OK or status >= 400


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (C.UNAUTHENTICATED, "LUCID_ERR_1901"),
        (C.PERMISSION_DENIED, "LUCID_ERR_1902"),
        (C.INVALID_ARGUMENT, "LUCID_ERR_1904"),
        (C.UNAVAILABLE, "LUCID_ERR_1909"),  # no ErrorInfo: the control plane did not answer
        (C.ALREADY_EXISTS, "LUCID_ERR_1908"),
        (C.DEADLINE_EXCEEDED, "LUCID_ERR_1910"),
        (C.NOT_FOUND, "LUCID_ERR_1907"),
        (C.INTERNAL, "LUCID_ERR_1999"),
        (C.UNKNOWN, "LUCID_ERR_1999"),
    ],
)
def test_fallback_codes_without_status_details(code: grpc.StatusCode, expected: str) -> None:
    error = from_grpc(code, "plain failure", [("x-request-id", "r")])
    assert (error.code, error.message, error.details) == (expected, "plain failure", {})


def test_error_info_reason_and_metadata_become_code_and_details() -> None:
    info = error_details_pb2.ErrorInfo(
        reason="LUCID_ERR_1003", domain="lucid", metadata={"serviceId": "abc", "request_id": "r"}
    )
    error = from_grpc(C.ALREADY_EXISTS, "ignored", trailer(code_pb2.ALREADY_EXISTS, "dup", info))
    assert (error.status, error.code, error.message) == (409, "LUCID_ERR_1003", "dup")
    assert error.details == {"serviceId": "abc"}


def test_bad_request_becomes_field_violations_in_body_terms() -> None:
    bad = error_details_pb2.BadRequest()
    bad.field_violations.add(field="registration.endpoint.port", description="must be >= 1")
    bad.field_violations.add(field="registration", description="is required")
    error = from_grpc(
        C.INVALID_ARGUMENT,
        None,
        trailer(code_pb2.INVALID_ARGUMENT, "invalid", bad),
        strip_field_prefix="registration.",
    )
    assert error.details["fieldViolations"] == [
        {"field": "endpoint.port", "description": "must be >= 1"},
        {"field": "registration", "description": "is required"},
    ]


RATE_LIMITED = error_details_pb2.ErrorInfo(reason="LUCID_ERR_1903", domain="lucid")


def test_retry_info_sets_retry_after_rounded_up() -> None:
    delay = duration_pb2.Duration(seconds=2, nanos=300_000_000)
    retry = error_details_pb2.RetryInfo(retry_delay=delay)
    error = from_grpc(
        C.RESOURCE_EXHAUSTED,
        None,
        trailer(code_pb2.RESOURCE_EXHAUSTED, "slow", RATE_LIMITED, retry),
    )
    assert error.retry_after == 3
    assert error.headers() == {"Retry-After": "3"}
    assert error.details["retryAfterSeconds"] == 2.3
    unavailable = from_grpc(C.UNAVAILABLE, None, trailer(code_pb2.UNAVAILABLE, "down", retry))
    assert (unavailable.status, unavailable.retry_after) == (503, 3)


def test_429_without_retry_info_still_says_when_to_retry() -> None:
    limited = trailer(code_pb2.RESOURCE_EXHAUSTED, "x", RATE_LIMITED)
    assert from_grpc(C.RESOURCE_EXHAUSTED, "x", limited).headers() == {"Retry-After": "1"}
    assert from_grpc(C.UNAVAILABLE, "x", None).headers() == {}


def test_grpc_own_resource_exhausted_is_not_a_rate_limit() -> None:
    """Issue 8: grpc's metadata/message-size RESOURCE_EXHAUSTED (no Lucid ErrorInfo) was 429
    "rate limited" with Retry-After (clients retried forever) and exposed internal sizes."""
    message = "received metadata size exceeds soft limit (9013 vs. 8192)"
    for given in (None, trailer(code_pb2.RESOURCE_EXHAUSTED, message)):
        error = from_grpc(C.RESOURCE_EXHAUSTED, message, given)
        assert (error.status, error.code, error.retry_after) == (400, "LUCID_ERR_1911", None)
        assert "Retry-After" not in error.headers()
        assert "8192" not in error.message and "9013" not in error.message


def test_every_401_asks_for_a_bearer_token() -> None:
    error = from_grpc(C.UNAUTHENTICATED, "expired", None)
    assert (error.status, error.headers()) == (401, {"WWW-Authenticate": "Bearer"})


def test_typed_details_show_numbers_as_numbers() -> None:
    info = error_details_pb2.ErrorInfo(
        reason="LUCID_ERR_1905", domain="lucid", metadata={"registeredRevision": "2"}
    )
    typed = struct_pb2.Struct()
    typed.update({"registeredRevision": 2, "ratio": 0.5, "names": ["a"]})
    error = from_grpc(C.ABORTED, "x", trailer(code_pb2.ABORTED, "x", info, typed))
    assert error.details == {"registeredRevision": 2, "ratio": 0.5, "names": ["a"]}


def test_precondition_failure_is_listed() -> None:
    failure = error_details_pb2.PreconditionFailure()
    failure.violations.add(type="REVISION", subject="k", description="stale")
    error = from_grpc(C.ABORTED, None, trailer(code_pb2.ABORTED, "conflict", failure))
    assert error.details["preconditionFailures"] == [
        {"type": "REVISION", "subject": "k", "description": "stale"}
    ]
    assert error.code == "LUCID_ERR_1905"


def test_inconsistent_or_corrupt_status_details_are_ignored() -> None:
    info = error_details_pb2.ErrorInfo(reason="LUCID_ERR_1003")
    wrong_code = from_grpc(C.NOT_FOUND, "nf", trailer(code_pb2.ALREADY_EXISTS, "dup", info))
    assert (wrong_code.code, wrong_code.message) == ("LUCID_ERR_1907", "nf")
    corrupt = from_grpc(C.INTERNAL, None, [("grpc-status-details-bin", b"\xff\xff\xff")])
    assert (corrupt.code, corrupt.message) == ("LUCID_ERR_1999", "INTERNAL")


def test_body_has_the_seed_error_shape() -> None:
    body = malformed("bad", [("a.b", "wrong")]).body(
        "1b4e28ba-2fa1-11d2-883f-0016d3cca427", datetime(2025, 1, 10, 19, 8, tzinfo=UTC), "0.1.0"
    )
    assert body == {
        "error": {
            "code": "LUCID_ERR_1904",
            "message": "bad",
            "details": {"fieldViolations": [{"field": "a.b", "description": "wrong"}]},
            "request_id": "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
            "timestamp": "2025-01-10T19:08:00Z",
            "service": "lucid-cp",
            "version": "0.1.0",
        }
    }


def test_rfc3339_is_utc_with_milliseconds() -> None:
    stamp = rfc3339(datetime(2025, 1, 10, 19, 8, 0, 123456, tzinfo=UTC))
    assert stamp == "2025-01-10T19:08:00.123Z"
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", rfc3339(datetime(2025, 1, 1, tzinfo=UTC))
    )
