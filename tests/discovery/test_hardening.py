"""Issue 8 over the wire (real server on 127.0.0.1:0, real gRPC client): free-form nesting cap,
the declared consistent-hash rule, GetInstance, and oversized tokens."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from google.rpc import error_details_pb2

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.rpc.interceptor import MAX_TOKEN_BYTES
from lucid_cp.validation import MAX_STRUCT_DEPTH, json_depth

from .conftest import ADMIN, auth, detail_of, error_info, register, registration, token

WAIT = 5.0


def nested(depth: int) -> struct_pb2.Struct:
    value: dict[str, object] = {"leaf": True}
    for _ in range(depth - 1):
        value = {"a": value}
    return json_format.ParseDict(value, struct_pb2.Struct())


def violations(err: grpc.aio.AioRpcError) -> list[str]:
    info, status = error_info(err)
    assert info.reason == "LUCID_ERR_1004"
    bad = detail_of(status, error_details_pb2.BadRequest)
    return [v.field for v in bad.field_violations]


async def test_structs_at_the_depth_limit_round_trip_through_every_read(stub) -> None:
    reg = registration()
    reg.metadata.CopyFrom(nested(MAX_STRUCT_DEPTH))
    await register(stub, reg)
    update = pb.HealthUpdate(status=pb.HEALTH_STATE_HEALTHY, details=nested(MAX_STRUCT_DEPTH))
    await stub.UpdateHealth(
        pb.UpdateHealthRequest(service_id=reg.service_id, update=update), metadata=auth()
    )
    [found] = (await stub.Discover(pb.DiscoverRequest(), metadata=ADMIN)).services
    assert json_depth(found.metadata) == json_depth(found.health.details) == MAX_STRUCT_DEPTH
    got = await stub.GetInstance(pb.GetInstanceRequest(service_id=reg.service_id), metadata=ADMIN)
    assert got.instance.health.details == update.details
    call = stub.Watch(pb.WatchRequest(), metadata=ADMIN)
    snapshot = await asyncio.wait_for(call.read(), WAIT)
    assert snapshot.snapshot.instances[0].health.details == update.details
    await stub.Drain(pb.DrainRequest(service_id=reg.service_id), metadata=auth())
    changed = await asyncio.wait_for(call.read(), WAIT)
    assert changed.type == pb.WATCH_EVENT_TYPE_UPDATED and changed.instance.metadata == reg.metadata
    call.cancel()


async def test_one_level_over_is_refused_and_nothing_is_stored(stub) -> None:
    reg = registration()
    reg.metadata.CopyFrom(nested(MAX_STRUCT_DEPTH + 1))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await register(stub, reg)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(caught.value) == ["registration.metadata"]
    assert not (await stub.Discover(pb.DiscoverRequest(), metadata=ADMIN)).services

    reg.metadata.Clear()
    await register(stub, reg)
    deep = pb.HealthUpdate(status=pb.HEALTH_STATE_HEALTHY, details=nested(MAX_STRUCT_DEPTH + 1))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.UpdateHealth(
            pb.UpdateHealthRequest(service_id=reg.service_id, update=deep), metadata=auth()
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(caught.value) == ["update.details"]
    got = await stub.GetInstance(pb.GetInstanceRequest(service_id=reg.service_id), metadata=ADMIN)
    assert got.instance.status == pb.HEALTH_STATE_UNKNOWN and not got.instance.health.details
    # Every read still decodes.
    assert len((await stub.Discover(pb.DiscoverRequest(), metadata=ADMIN)).services) == 1


async def test_consistent_hash_without_a_key_is_a_field_violation_even_with_no_instances(
    stub,
) -> None:
    request = pb.ResolveRequest(
        service_name="nobody-here", load_balance=pb.LOAD_BALANCE_CONSISTENT_HASH
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Resolve(request, metadata=auth())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(caught.value) == ["hashKey"]
    assert "consistent-hash" in (caught.value.details() or "")
    request.hash_key = "user-1"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Resolve(request, metadata=auth())
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # valid: just nothing registered


async def test_get_instance_returns_it_with_revision_and_connections(stub) -> None:
    reg = registration()
    registered = await register(stub, reg)
    await stub.Heartbeat(
        pb.HeartbeatRequest(service_id=reg.service_id, active_connections=5), metadata=auth()
    )
    got = (
        await stub.GetInstance(pb.GetInstanceRequest(service_id=reg.service_id), metadata=auth())
    ).instance
    assert got.service_id == reg.service_id and got.endpoint.port == reg.endpoint.port
    assert got.revision == registered.revision and got.active_connections == 5


async def test_get_instance_of_an_unknown_id_is_not_found(stub) -> None:
    missing = registration().service_id
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetInstance(pb.GetInstanceRequest(service_id=missing), metadata=auth())
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(caught.value)[0].reason == "LUCID_ERR_1002"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetInstance(pb.GetInstanceRequest(service_id="not-a-uuid"), metadata=auth())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_token_over_the_limit_is_unauthenticated_not_resource_exhausted(stub) -> None:
    bearer = "Bearer " + token()
    padded = bearer + "A" * (MAX_TOKEN_BYTES + 1 - len(bearer))  # 8 KiB + 1, signature broken
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Discover(pb.DiscoverRequest(), metadata=(("authorization", padded),))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(caught.value)[0].reason == "LUCID_ERR_1901"
    assert "16384" not in (caught.value.details() or "")
    at_limit = "Bearer " + "A" * (MAX_TOKEN_BYTES - 7)  # reaches the verifier: just invalid
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Discover(pb.DiscoverRequest(), metadata=(("authorization", at_limit),))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "too large" not in (caught.value.details() or "")


async def test_a_20_kib_header_is_not_answered_as_a_rate_limit(stub) -> None:
    """Over the server's metadata limit grpc itself refuses the call before any Lucid code runs
    (RESOURCE_EXHAUSTED from grpc core, documented in the README): it must carry none of the
    rate limit's semantics (no LUCID_ERR_1903, no RetryInfo telling the client to come back)."""
    huge = "Bearer " + "A" * (20 * 1024)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Discover(pb.DiscoverRequest(), metadata=(("authorization", huge),))
    err = caught.value
    if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        trailers = dict(err.trailing_metadata() or ())
        assert "grpc-status-details-bin" not in trailers  # no ErrorInfo 1903, no RetryInfo
    else:
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
