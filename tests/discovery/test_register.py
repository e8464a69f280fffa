"""Register / Deregister / UpdateHealth / Heartbeat through a real gRPC channel."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.api.lucid.discovery.v1 import storage_pb2
from lucid_cp.discovery import keys

from .conftest import ADMIN, auth, detail_of, error_info, register, registration, set_health


async def test_register_returns_the_seed_shape_with_defaults(stub) -> None:
    reg = registration()
    response = await register(stub, reg)
    assert response.service_id == reg.service_id
    assert response.service_name == "api-gateway"
    assert response.cluster == pb.CLUSTER_API_GATEWAY and response.plane == pb.PLANE_OPS
    assert response.endpoint == reg.endpoint
    assert response.status == pb.REGISTRATION_STATUS_REGISTERED
    assert response.registered_at.seconds > 0
    assert response.ttl == 300  # data-models.md default
    assert response.revision > 0

    found = await stub.Discover(pb.DiscoverRequest(service_name="api-gateway"), metadata=ADMIN)
    [instance] = found.services
    assert instance.status == pb.HEALTH_STATE_UNKNOWN
    assert instance.health_check.retries == 3
    assert instance.health_check.success_threshold == 1
    assert instance.health_check.failure_threshold == 3
    assert instance.weight == 100
    assert instance.revision == response.revision


async def test_duplicate_service_id_is_rejected_and_the_original_untouched(stub) -> None:
    original = registration(port=8080)
    await register(stub, original)
    clash = registration(service_id=original.service_id, port=9999, version="2.0.0")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await register(stub, clash)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    info, _ = error_info(caught.value)
    assert info.reason == "LUCID_ERR_1003" and info.domain == "lucid"
    assert info.metadata["serviceId"] == original.service_id

    found = await stub.Discover(pb.DiscoverRequest(), metadata=ADMIN)
    [instance] = found.services
    assert instance.endpoint.port == 8080 and instance.version == "1.0.0"


async def test_invalid_registration_names_every_bad_field_and_writes_nothing(stub) -> None:
    reg = registration()
    reg.service_id = "not-a-uuid"
    reg.service_name = "Bad_Name"
    reg.endpoint.port = 70000
    reg.endpoint.host = "under_score"
    reg.version = "v1"
    reg.ttl = 5
    reg.health_check.interval = 1
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Register(pb.RegisterRequest(registration=reg), metadata=ADMIN)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, status = error_info(caught.value)
    assert info.reason == "LUCID_ERR_1004"
    bad = detail_of(status, error_details_pb2.BadRequest)
    fields = {v.field for v in bad.field_violations}
    assert fields == {
        "registration.serviceId",
        "registration.serviceName",
        "registration.endpoint.port",
        "registration.endpoint.host",
        "registration.version",
        "registration.ttl",
        "registration.healthCheck.interval",
    }
    found = await stub.Discover(pb.DiscoverRequest(), metadata=ADMIN)
    assert found.total == 0


async def test_missing_required_fields_and_unknown_enum_values(stub) -> None:
    reg = registration()
    reg.ClearField("health_check")
    reg.cluster = 99  # not a Cluster value: proto3 keeps unknown numbers, we reject them
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Register(pb.RegisterRequest(registration=reg), metadata=ADMIN)
    _, status = error_info(caught.value)
    fields = {
        v.field: v.description
        for v in detail_of(status, error_details_pb2.BadRequest).field_violations
    }
    assert fields["registration.healthCheck"] == "is required"
    assert "unknown Cluster value 99" in fields["registration.cluster"]


async def test_oversize_and_mistyped_metadata_is_rejected(stub) -> None:
    reg = registration()
    reg.metadata.update({"blob": "x" * 9000})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await register(stub, reg)
    _, status = error_info(caught.value)
    [violation] = detail_of(status, error_details_pb2.BadRequest).field_violations
    assert violation.field == "registration.metadata" and "8192 bytes" in violation.description

    reg = registration()
    reg.metadata.update({"tags": "not-a-list", "description": "d" * 501})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await register(stub, reg)
    _, status = error_info(caught.value)
    fields = {v.field for v in detail_of(status, error_details_pb2.BadRequest).field_violations}
    assert fields == {"registration.metadata.tags", "registration.metadata.description"}

    ok = registration()
    ok.metadata.update({"tags": ["edge"], "description": "front door", "owner": {"team": "ops"}})
    await register(stub, ok)


async def test_malformed_protobuf_gets_a_clear_error(channel) -> None:
    call = channel.unary_unary(
        "/lucid.discovery.v1.DiscoveryService/Register",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(b"\x0a\xff\xff\xff\xff\x0f garbage", metadata=ADMIN)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, _ = error_info(caught.value)
    assert info.reason == "LUCID_ERR_1904"


async def test_deregister_is_final(stub) -> None:
    reg = registration()
    await register(stub, reg)
    response = await stub.Deregister(
        pb.DeregisterRequest(service_id=reg.service_id), metadata=auth()
    )
    assert response.revision > 0
    found = await stub.Discover(pb.DiscoverRequest(), metadata=ADMIN)
    assert found.total == 0
    for attempt in (
        stub.Heartbeat(pb.HeartbeatRequest(service_id=reg.service_id), metadata=auth()),
        set_health(stub, reg.service_id, pb.HEALTH_STATE_HEALTHY),
        stub.Deregister(pb.DeregisterRequest(service_id=reg.service_id), metadata=auth()),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await attempt
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert error_info(caught.value)[0].reason == "LUCID_ERR_1002"
    assert (await stub.Discover(pb.DiscoverRequest(), metadata=ADMIN)).total == 0


async def test_deregister_unknown_is_not_found(stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Deregister(
            pb.DeregisterRequest(service_id="550e8400-e29b-41d4-a716-446655440000"), metadata=ADMIN
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    info, _ = error_info(caught.value)
    assert info.reason == "LUCID_ERR_1002"


async def test_health_updates_count_consecutive_results(stub) -> None:
    reg = registration()
    await register(stub, reg)
    first = await set_health(stub, reg.service_id, pb.HEALTH_STATE_HEALTHY, md=auth())
    second = await set_health(stub, reg.service_id, pb.HEALTH_STATE_HEALTHY, md=auth())
    assert second.health.consecutive_successes == 2 and second.revision > first.revision
    details = struct_pb2.Struct()
    details.update({"probe": "db"})
    failed = await stub.UpdateHealth(
        pb.UpdateHealthRequest(
            service_id=reg.service_id,
            update=pb.HealthUpdate(
                status=pb.HEALTH_STATE_UNHEALTHY,
                error="db down",
                response_time=12.5,
                details=details,
            ),
        ),
        metadata=auth(),
    )
    health = failed.health
    assert health.status == pb.HEALTH_STATE_UNHEALTHY
    assert (health.consecutive_failures, health.consecutive_successes) == (1, 0)
    assert health.error == "db down" and health.response_time == 12.5
    assert health.details["probe"] == "db"
    [instance] = (await stub.Discover(pb.DiscoverRequest(), metadata=ADMIN)).services
    assert instance.status == pb.HEALTH_STATE_UNHEALTHY
    assert instance.health == health
    assert instance.last_health_check == health.last_check


async def test_heartbeat_refreshes_and_reports_load(stub) -> None:
    reg = registration(ttl=60)
    await register(stub, reg)
    beat = await stub.Heartbeat(
        pb.HeartbeatRequest(service_id=reg.service_id, active_connections=7), metadata=auth()
    )
    assert beat.ttl == 60
    [instance] = (await stub.Discover(pb.DiscoverRequest(), metadata=ADMIN)).services
    assert instance.active_connections == 7


async def test_tls_client_key_is_never_returned(stub) -> None:
    reg = registration()
    reg.endpoint.tls.enabled = True
    reg.endpoint.tls.client_cert = "CERT"
    reg.endpoint.tls.client_key = "SECRET-KEY"
    response = await register(stub, reg)
    assert response.endpoint.tls.client_cert == "CERT" and not response.endpoint.tls.client_key
    await set_health(stub, reg.service_id, pb.HEALTH_STATE_HEALTHY)
    [instance] = (await stub.Discover(pb.DiscoverRequest(), metadata=ADMIN)).services
    assert instance.endpoint.tls.client_cert == "CERT" and not instance.endpoint.tls.client_key
    resolved = await stub.Resolve(pb.ResolveRequest(service_name="api-gateway"), metadata=ADMIN)
    assert resolved.tls.enabled and not resolved.tls.client_key


async def test_tls_client_key_is_never_stored(stub, control_plane) -> None:
    reg = registration()
    reg.endpoint.tls.enabled = True
    reg.endpoint.tls.client_cert = "CERT"
    reg.endpoint.tls.client_key = "SECRET-KEY"
    await register(stub, reg)
    await set_health(stub, reg.service_id, pb.HEALTH_STATE_HEALTHY)  # a rewrite of the record
    kv = await control_plane.store.get(keys.instance_key(reg.service_id))
    assert kv is not None and b"SECRET-KEY" not in kv.value
    record = storage_pb2.StoredInstance.FromString(kv.value)
    assert record.instance.endpoint.tls.client_cert == "CERT"
    assert not record.instance.endpoint.tls.client_key


async def test_the_internal_lease_id_is_not_exposed(stub, control_plane) -> None:
    # The lease lives in the store record beside the instance, not in the public message.
    assert "lease_id" not in pb.ServiceInstance.DESCRIPTOR.fields_by_name
    reg = registration()
    await register(stub, reg)
    kv = await control_plane.store.get(keys.instance_key(reg.service_id))
    assert kv is not None and storage_pb2.StoredInstance.FromString(kv.value).lease_id > 0
    beat = await stub.Heartbeat(pb.HeartbeatRequest(service_id=reg.service_id), metadata=auth())
    assert beat.ttl == 300
