"""StatusTable: generic rows, per-system rows, MRO lookup, refused rows and the details every
google.rpc.Status carries (ErrorInfo, BadRequest, RetryInfo, PreconditionFailure)."""

from __future__ import annotations

import json

import pytest
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from lucid_cp.api.lucid.common.v1 import errors_pb2
from lucid_cp.discovery.errors import (
    STATUS_ROWS,
    InvalidServiceConfiguration,
    ServiceAlreadyRegistered,
    ServiceNotFound,
)
from lucid_cp.errors import (
    AlreadyExists,
    Conflict,
    FieldViolation,
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
from lucid_cp.rpc.status import DOMAIN, GENERIC_ROWS, STORE_RETRY_SECONDS, StatusTable
from lucid_cp.store.base import RequestTooLargeError, StoreUnavailableError, TooManyOpsError

R = errors_pb2.ErrorReason
REQUEST_ID = "req-7f3a"


def generic_error(cls: type[Exception]) -> Exception:
    if cls is RateLimited:
        return RateLimited("registration", 12.5)
    return cls("boom")


def detail(status: status_pb2.Status, kind: type[Message]) -> Message | None:
    found = [d for d in status.details if d.Is(kind.DESCRIPTOR)]
    assert len(found) <= 1, f"{kind.__name__} appears {len(found)} times"
    if not found:
        return None
    message = kind()
    found[0].Unpack(message)
    return message


def error_info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo:
    info = detail(status, error_details_pb2.ErrorInfo)
    assert isinstance(info, error_details_pb2.ErrorInfo), f"no ErrorInfo in {status}"
    assert info.domain == DOMAIN == "lucid"
    return info


@pytest.fixture
def table() -> StatusTable:
    return StatusTable([STATUS_ROWS])


# -- generic rows ------------------------------------------------------------------------------

GENERIC_EXPECTED = [
    (InvalidArgument, code_pb2.INVALID_ARGUMENT, "LUCID_ERR_1904"),
    (MalformedRequest, code_pb2.INVALID_ARGUMENT, "LUCID_ERR_1904"),
    (NotFound, code_pb2.NOT_FOUND, "LUCID_ERR_1907"),
    (AlreadyExists, code_pb2.ALREADY_EXISTS, "LUCID_ERR_1908"),
    (Conflict, code_pb2.ABORTED, "LUCID_ERR_1905"),
    (Unauthenticated, code_pb2.UNAUTHENTICATED, "LUCID_ERR_1901"),
    (PermissionDenied, code_pb2.PERMISSION_DENIED, "LUCID_ERR_1902"),
    (MethodNotAllowed, code_pb2.PERMISSION_DENIED, "LUCID_ERR_1912"),
    (RateLimited, code_pb2.RESOURCE_EXHAUSTED, "LUCID_ERR_1903"),
    (Unavailable, code_pb2.UNAVAILABLE, "LUCID_ERR_1909"),
    (StoreUnavailableError, code_pb2.UNAVAILABLE, "LUCID_ERR_1906"),
    (TooManyOpsError, code_pb2.INVALID_ARGUMENT, "LUCID_ERR_1911"),
    (RequestTooLargeError, code_pb2.INVALID_ARGUMENT, "LUCID_ERR_1911"),
]


def test_the_expected_list_covers_every_generic_row() -> None:
    assert {cls for cls, _, _ in GENERIC_EXPECTED} == set(GENERIC_ROWS)


@pytest.mark.parametrize(
    ("cls", "code", "reason"), GENERIC_EXPECTED, ids=[c.__name__ for c, _, _ in GENERIC_EXPECTED]
)
def test_generic_row(cls: type[Exception], code: int, reason: str, table: StatusTable) -> None:
    status = table.to_rpc_status(generic_error(cls), REQUEST_ID)
    assert status.code == code
    assert error_info(status).reason == reason
    assert table.is_known(generic_error(cls))


def test_generic_rows_alone_without_any_system() -> None:
    status = StatusTable().to_rpc_status(NotFound("no such route"), REQUEST_ID)
    assert (status.code, error_info(status).reason) == (code_pb2.NOT_FOUND, "LUCID_ERR_1907")
    assert status.message == "no such route"


# -- discovery's rows --------------------------------------------------------------------------


def test_service_not_found(table: StatusTable) -> None:
    status = table.to_rpc_status(ServiceNotFound("no instance abc"), REQUEST_ID)
    assert status.code == code_pb2.NOT_FOUND
    assert error_info(status).reason == "LUCID_ERR_1002"
    assert status.message == "no instance abc"


def test_service_already_registered(table: StatusTable) -> None:
    status = table.to_rpc_status(ServiceAlreadyRegistered("abc exists"), REQUEST_ID)
    assert status.code == code_pb2.ALREADY_EXISTS
    assert error_info(status).reason == "LUCID_ERR_1003"


def test_invalid_service_configuration_carries_field_violations(table: StatusTable) -> None:
    violations = [
        FieldViolation("registration.endpoint.port", "must be at most 65535"),
        FieldViolation("registration.serviceName", "is required"),
    ]
    status = table.to_rpc_status(InvalidServiceConfiguration("bad", violations), REQUEST_ID)
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert error_info(status).reason == "LUCID_ERR_1004"
    bad = detail(status, error_details_pb2.BadRequest)
    assert isinstance(bad, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("registration.endpoint.port", "must be at most 65535"),
        ("registration.serviceName", "is required"),
    ]


def test_invalid_argument_without_violations_has_no_bad_request(table: StatusTable) -> None:
    status = table.to_rpc_status(InvalidServiceConfiguration("bad"), REQUEST_ID)
    assert detail(status, error_details_pb2.BadRequest) is None


def test_a_generic_already_exists_keeps_the_generic_reason(table: StatusTable) -> None:
    status = table.to_rpc_status(AlreadyExists("route exists"), REQUEST_ID)
    assert status.code == code_pb2.ALREADY_EXISTS
    assert error_info(status).reason == "LUCID_ERR_1908"
    assert error_info(status).reason != "LUCID_ERR_1003"  # not "service already registered"


def test_the_most_specific_row_along_the_mro_wins(table: StatusTable) -> None:
    class InstanceGone(ServiceNotFound):
        pass

    class RouteGone(NotFound):
        pass

    gone = table.to_rpc_status(InstanceGone("gone"), REQUEST_ID)
    assert (gone.code, error_info(gone).reason) == (code_pb2.NOT_FOUND, "LUCID_ERR_1002")
    route = table.to_rpc_status(RouteGone("gone"), REQUEST_ID)
    assert (route.code, error_info(route).reason) == (code_pb2.NOT_FOUND, "LUCID_ERR_1907")


def test_a_system_row_takes_its_code_from_its_generic_base() -> None:
    class PolicyInvalid(InvalidArgument):
        pass

    table = StatusTable([{PolicyInvalid: R.POLICY_VALIDATION_FAILED}])
    status = table.to_rpc_status(PolicyInvalid("bad policy"), REQUEST_ID)
    assert (status.code, error_info(status).reason) == (code_pb2.INVALID_ARGUMENT, "LUCID_ERR_1102")


# -- rows refused when the table is built ------------------------------------------------------


def test_a_row_whose_class_is_not_a_generic_error_is_refused() -> None:
    class Loose(LucidError):  # the common base has no row: no code to inherit
        pass

    with pytest.raises(ValueError, match="Loose does not derive from a generic error"):
        StatusTable([{Loose: R.SERVICE_NOT_FOUND}])
    with pytest.raises(ValueError, match="KeyError does not derive"):
        StatusTable([{KeyError: R.SERVICE_NOT_FOUND}])


def test_a_class_mapped_by_two_systems_is_refused() -> None:
    with pytest.raises(ValueError, match="ServiceNotFound is mapped twice"):
        StatusTable([STATUS_ROWS, {ServiceNotFound: R.DISCOVERY_TIMEOUT}])


def test_a_system_row_remapping_a_generic_class_is_refused() -> None:
    with pytest.raises(ValueError, match="NotFound is mapped twice"):
        StatusTable([{NotFound: R.SERVICE_NOT_FOUND}])


def test_a_row_with_an_undeclared_reason_number_is_refused() -> None:
    class Odd(NotFound):
        pass

    assert 4242 not in R.values()
    with pytest.raises(ValueError, match="not a declared error reason"):
        StatusTable([{Odd: 4242}])


def test_a_row_with_the_unspecified_reason_is_refused() -> None:
    class Odd(NotFound):
        pass

    with pytest.raises((LookupError, ValueError)):
        StatusTable([{Odd: R.ERROR_REASON_UNSPECIFIED}])


# -- unknown exceptions ------------------------------------------------------------------------


def test_an_unknown_exception_is_internal_without_internals(table: StatusTable) -> None:
    exc = RuntimeError("password=hunter2 at /srv/secret.db")
    assert not table.is_known(exc)
    status = table.to_rpc_status(exc, REQUEST_ID)
    assert status.code == code_pb2.INTERNAL
    assert REQUEST_ID in status.message
    assert "hunter2" not in status.message and "RuntimeError" not in status.message
    info = error_info(status)
    assert info.reason == "LUCID_ERR_1999"
    assert dict(info.metadata) == {"request_id": REQUEST_ID}
    assert "hunter2" not in status.SerializeToString().decode("latin-1")


def test_an_unknown_lucid_error_subclass_is_internal_too(table: StatusTable) -> None:
    class Stray(LucidError):
        pass

    status = table.to_rpc_status(Stray("leaky detail", details={"path": "/x"}), REQUEST_ID)
    assert status.code == code_pb2.INTERNAL
    assert "leaky detail" not in status.message
    assert dict(error_info(status).metadata) == {"request_id": REQUEST_ID}


# -- details -----------------------------------------------------------------------------------


def retry_seconds(status: status_pb2.Status) -> float | None:
    retry = detail(status, error_details_pb2.RetryInfo)
    if retry is None:
        return None
    assert isinstance(retry, error_details_pb2.RetryInfo)
    return retry.retry_delay.ToNanoseconds() / 1e9


def test_rate_limited_carries_its_retry_after(table: StatusTable) -> None:
    status = table.to_rpc_status(RateLimited("registration", 12.5), REQUEST_ID)
    assert retry_seconds(status) == pytest.approx(12.5)
    other = table.to_rpc_status(RateLimited("registration", 0.25), REQUEST_ID)
    assert retry_seconds(other) == pytest.approx(0.25)


def test_store_unavailable_says_retry_in_one_second(table: StatusTable) -> None:
    status = table.to_rpc_status(StoreUnavailableError("etcd down"), REQUEST_ID)
    assert STORE_RETRY_SECONDS == 1.0
    assert retry_seconds(status) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "exc", [NotFound("x"), Conflict("x"), RuntimeError("x")], ids=["NotFound", "Conflict", "other"]
)
def test_no_retry_info_for_other_errors(exc: Exception, table: StatusTable) -> None:
    assert retry_seconds(table.to_rpc_status(exc, REQUEST_ID)) is None


def test_conflict_carries_a_precondition_failure(table: StatusTable) -> None:
    exc = Conflict("revision moved", details={"key": "/lucid/instances/abc", "revision": 41})
    status = table.to_rpc_status(exc, REQUEST_ID)
    failure = detail(status, error_details_pb2.PreconditionFailure)
    assert isinstance(failure, error_details_pb2.PreconditionFailure)
    assert [(v.type, v.subject, v.description) for v in failure.violations] == [
        ("REVISION", "/lucid/instances/abc", "revision moved")
    ]
    assert detail(table.to_rpc_status(NotFound("x"), REQUEST_ID), type(failure)) is None


def test_error_info_metadata_carries_the_request_id_and_the_details(table: StatusTable) -> None:
    exc = ServiceNotFound(
        "no instance", details={"serviceId": "abc", "candidates": 0, "tags": ["a", "b"]}
    )
    metadata = dict(error_info(table.to_rpc_status(exc, REQUEST_ID)).metadata)
    assert metadata == {
        "request_id": REQUEST_ID,
        "serviceId": "abc",
        "candidates": "0",
        "tags": json.dumps(["a", "b"]),
    }


def test_rate_limited_metadata_names_the_bucket(table: StatusTable) -> None:
    metadata = error_info(table.to_rpc_status(RateLimited("health", 3.0), REQUEST_ID)).metadata
    assert metadata["request_id"] == REQUEST_ID
    assert metadata["bucket"] == "health"
    assert json.loads(metadata["retryAfterSeconds"]) == 3.0
