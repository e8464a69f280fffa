"""Authentication, authorization and rate limiting, through a real gRPC channel."""

from __future__ import annotations

import time
import warnings

import grpc
import jwt
import jwt.warnings
import pytest
from google.rpc import error_details_pb2

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.auth.tokens import Role
from lucid_cp.config import RateLimit

from .conftest import (
    ADMIN,
    SECRET,
    auth,
    detail_of,
    error_info,
    register,
    registration,
    set_health,
    with_limits,
)


def _raw(
    claims: dict[str, object], key: bytes = SECRET, algorithm: str = "HS256"
) -> tuple[tuple[str, str]]:
    with warnings.catch_warnings():
        # pyjwt warns that our HS256-sized key is short for HS512; that token is meant to fail.
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        encoded = jwt.encode(claims, key, algorithm=algorithm)
    return (("authorization", f"Bearer {encoded}"),)


def _claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": "api-gateway",
        "roles": ["service"],
        "iss": "lucid-cp",
        "aud": "lucid-cp",
        "iat": now,
        "exp": now + 300,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


BAD_TOKENS = {
    "missing": (),
    "not bearer": (("authorization", "Basic dXNlcjpwYXNz"),),
    "garbage": (("authorization", "Bearer not.a.jwt"),),
    "wrong key": _raw(_claims(), key=b"another-secret-another-secret-0123"),
    "expired": _raw(_claims(exp=int(time.time()) - 60)),
    "wrong audience": _raw(_claims(aud="someone-else")),
    "wrong issuer": _raw(_claims(iss="evil")),
    "no exp": _raw(_claims(exp=None)),
    "no roles": _raw(_claims(roles=None)),
    "unknown role": _raw(_claims(roles=["root"])),
    "HS512 not allowed": _raw(_claims(), algorithm="HS512"),
    "alg none": (("authorization", "Bearer " + jwt.encode(_claims(), None, algorithm="none")),),
}


@pytest.mark.parametrize("name", sorted(BAD_TOKENS))
async def test_bad_tokens_are_unauthenticated(stub, name: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Discover(pb.DiscoverRequest(), metadata=BAD_TOKENS[name])
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    info, _ = error_info(caught.value)
    assert info.reason == "LUCID_ERR_1901"


async def test_health_and_reflection_need_no_token(channel) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    response = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="lucid.discovery.v1.DiscoveryService")
    )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_services_act_only_as_themselves(stub) -> None:
    other = registration("blockchain-core")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await register(stub, other, md=auth("api-gateway"))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(caught.value)[0].reason == "LUCID_ERR_1902"

    await register(stub, other, md=auth("blockchain-core"))
    for attempt in (
        stub.Deregister(
            pb.DeregisterRequest(service_id=other.service_id), metadata=auth("api-gateway")
        ),
        set_health(stub, other.service_id, pb.HEALTH_STATE_UNHEALTHY, md=auth("api-gateway")),
        stub.Heartbeat(
            pb.HeartbeatRequest(service_id=other.service_id), metadata=auth("api-gateway")
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await attempt
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    [instance] = (await stub.Discover(pb.DiscoverRequest(), metadata=ADMIN)).services
    assert instance.status == pb.HEALTH_STATE_UNKNOWN  # the forbidden update changed nothing


async def test_admin_may_act_for_any_service(stub) -> None:
    reg = registration("blockchain-core")
    await register(stub, reg, md=auth("root", Role.ADMIN))
    await set_health(stub, reg.service_id, pb.HEALTH_STATE_HEALTHY, md=auth("root", Role.ADMIN))
    await stub.Deregister(
        pb.DeregisterRequest(service_id=reg.service_id), metadata=auth("root", Role.ADMIN)
    )


@pytest.mark.parametrize("settings", [with_limits(registration=RateLimit(2, 60.0))])
async def test_rate_limit_is_per_principal_with_retry_info(stub) -> None:
    await register(stub, registration())
    await register(stub, registration())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await register(stub, registration())
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info, status = error_info(caught.value)
    assert info.reason == "LUCID_ERR_1903"
    retry = detail_of(status, error_details_pb2.RetryInfo)
    assert (
        25 <= retry.retry_delay.ToTimedelta().total_seconds() <= 30
    )  # 2 per 60 s: one token in 30 s
    # Another principal has its own bucket; other buckets are untouched.
    await register(stub, registration("blockchain-core"))
    await stub.Discover(pb.DiscoverRequest(), metadata=auth())


async def test_request_id_is_echoed_in_trailers_and_errors(stub) -> None:
    rid = "0b7e6a8e-6f1a-4d0e-9a3c-1f2e3d4c5b6a"
    call = stub.Discover(pb.DiscoverRequest(), metadata=(*ADMIN, ("x-request-id", rid)))
    await call
    assert dict(await call.trailing_metadata())["x-request-id"] == rid
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Deregister(
            pb.DeregisterRequest(service_id="550e8400-e29b-41d4-a716-446655440000"),
            metadata=(*ADMIN, ("x-request-id", rid)),
        )
    assert error_info(caught.value)[0].metadata["request_id"] == rid
