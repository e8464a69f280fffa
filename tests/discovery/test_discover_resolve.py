"""Discover (filters, pagination) and Resolve (health, versions, load balancing)."""

from __future__ import annotations

import collections
import uuid

import grpc
import pytest

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb

from .conftest import ADMIN, auth, error_info, register, registration, set_health


async def _healthy(stub, name: str = "api-gateway", **kw) -> pb.ServiceRegistration:
    reg = registration(name, **kw)
    await register(stub, reg)
    await set_health(stub, reg.service_id, pb.HEALTH_STATE_HEALTHY)
    return reg


async def test_discover_filters_and_paginates(stub) -> None:
    for i in range(5):
        await register(stub, registration("api-gateway", port=8000 + i))
    for i in range(3):
        reg = registration("tron-payment", cluster=pb.CLUSTER_TRON_PAYMENT, plane=pb.PLANE_WALLET)
        await register(stub, reg)
        if i == 0:
            await set_health(stub, reg.service_id, pb.HEALTH_STATE_HEALTHY)

    everything = await stub.Discover(pb.DiscoverRequest(), metadata=ADMIN)
    assert (everything.total, everything.limit, everything.offset) == (8, 100, 0)
    order = [(s.service_name, s.service_id) for s in everything.services]
    assert order == sorted(order)
    assert everything.revision > 0

    wallet = await stub.Discover(pb.DiscoverRequest(plane=pb.PLANE_WALLET), metadata=ADMIN)
    assert wallet.total == 3 and {s.service_name for s in wallet.services} == {"tron-payment"}
    healthy = await stub.Discover(
        pb.DiscoverRequest(cluster=pb.CLUSTER_TRON_PAYMENT, status=pb.HEALTH_STATE_HEALTHY),
        metadata=ADMIN,
    )
    assert healthy.total == 1
    by_name = await stub.Discover(pb.DiscoverRequest(service_name="api-gateway"), metadata=ADMIN)
    assert by_name.total == 5

    pages = []
    for offset in range(0, 8, 3):
        page = await stub.Discover(pb.DiscoverRequest(limit=3, offset=offset), metadata=ADMIN)
        assert page.total == 8 and page.limit == 3 and page.offset == offset
        pages.extend((s.service_name, s.service_id) for s in page.services)
    assert pages == order
    beyond = await stub.Discover(pb.DiscoverRequest(limit=3, offset=50), metadata=ADMIN)
    assert beyond.total == 8 and not beyond.services


@pytest.mark.parametrize("field,value", [("limit", 0), ("limit", 1001), ("offset", -1)])
async def test_discover_rejects_out_of_range_paging(stub, field: str, value: int) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Discover(pb.DiscoverRequest(**{field: value}), metadata=ADMIN)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_resolve_returns_only_healthy_instances(stub) -> None:
    healthy = await _healthy(stub, port=1111)
    sick = registration(port=2222)
    await register(stub, sick)
    await set_health(stub, sick.service_id, pb.HEALTH_STATE_UNHEALTHY)
    await register(stub, registration(port=3333))  # unknown
    for _ in range(6):
        resolved = await stub.Resolve(
            pb.ResolveRequest(service_name="api-gateway"), metadata=auth()
        )
        assert resolved.service_id == healthy.service_id
        assert (resolved.host, resolved.port, resolved.protocol, resolved.path) == (
            "api-gateway.lucid.onion",
            1111,
            pb.PROTOCOL_HTTPS,
            "/api/v1",
        )
        assert resolved.status == pb.HEALTH_STATE_HEALTHY


async def test_resolve_not_found_explains_why(stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Resolve(pb.ResolveRequest(service_name="nobody-here"), metadata=auth())
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    info, _ = error_info(caught.value)
    assert info.reason == "LUCID_ERR_1002" and "no instances" in caught.value.details()

    sick = registration()
    await register(stub, sick)
    await set_health(stub, sick.service_id, pb.HEALTH_STATE_UNHEALTHY)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Resolve(pb.ResolveRequest(service_name="api-gateway"), metadata=auth())
    info, _ = error_info(caught.value)
    assert "no healthy instance" in caught.value.details()
    assert info.metadata["registered"] == "1" and info.metadata["unhealthy"] == "1"


async def test_resolve_by_version(stub) -> None:
    v1 = await _healthy(stub, version="1.0.0")
    v2 = await _healthy(stub, version="2.0.0-beta")
    got = await stub.Resolve(
        pb.ResolveRequest(service_name="api-gateway", version="2.0.0-beta"), metadata=auth()
    )
    assert got.service_id == v2.service_id
    got = await stub.Resolve(
        pb.ResolveRequest(service_name="api-gateway", version="1.0.0"), metadata=auth()
    )
    assert got.service_id == v1.service_id
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Resolve(
            pb.ResolveRequest(service_name="api-gateway", version="3.0.0"), metadata=auth()
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_round_robin_cycles_through_every_healthy_instance(stub) -> None:
    regs = [await _healthy(stub, port=9000 + i) for i in range(3)]
    seen = [
        (
            await stub.Resolve(pb.ResolveRequest(service_name="api-gateway"), metadata=auth())
        ).service_id
        for _ in range(9)
    ]
    assert collections.Counter(seen) == {r.service_id: 3 for r in regs}
    assert seen[:3] == seen[3:6] == seen[6:]


async def test_least_connections_uses_heartbeat_reports(stub) -> None:
    regs = [await _healthy(stub, port=9100 + i) for i in range(3)]
    for reg, load in zip(regs, (40, 3, 17), strict=True):
        await stub.Heartbeat(
            pb.HeartbeatRequest(service_id=reg.service_id, active_connections=load), metadata=auth()
        )
    lc = pb.ResolveRequest(
        service_name="api-gateway", load_balance=pb.LOAD_BALANCE_LEAST_CONNECTIONS
    )
    for _ in range(4):
        assert (await stub.Resolve(lc, metadata=auth())).service_id == regs[1].service_id
    await stub.Heartbeat(
        pb.HeartbeatRequest(service_id=regs[1].service_id, active_connections=90), metadata=auth()
    )
    assert (await stub.Resolve(lc, metadata=auth())).service_id == regs[2].service_id


async def test_weighted_never_picks_weight_zero_and_follows_weights(stub) -> None:
    heavy = await _healthy(stub, weight=900)
    light = await _healthy(stub, weight=100)
    off = await _healthy(stub, weight=0)
    req = pb.ResolveRequest(service_name="api-gateway", load_balance=pb.LOAD_BALANCE_WEIGHTED)
    counts = collections.Counter(
        [(await stub.Resolve(req, metadata=auth())).service_id for _ in range(400)]
    )
    assert off.service_id not in counts
    assert counts[heavy.service_id] > 4 * counts[light.service_id] > 0


async def test_consistent_hash_is_sticky_and_needs_a_key(stub) -> None:
    for i in range(4):
        await _healthy(stub, port=9200 + i)
    req = pb.ResolveRequest(
        service_name="api-gateway", load_balance=pb.LOAD_BALANCE_CONSISTENT_HASH, hash_key="user-42"
    )
    first = (await stub.Resolve(req, metadata=auth())).service_id
    for _ in range(5):
        assert (await stub.Resolve(req, metadata=auth())).service_id == first
    spread = {
        (
            await stub.Resolve(
                pb.ResolveRequest(
                    service_name="api-gateway",
                    load_balance=pb.LOAD_BALANCE_CONSISTENT_HASH,
                    hash_key=f"user-{i}",
                ),
                metadata=auth(),
            )
        ).service_id
        for i in range(40)
    }
    assert len(spread) > 1
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Resolve(
            pb.ResolveRequest(
                service_name="api-gateway", load_balance=pb.LOAD_BALANCE_CONSISTENT_HASH
            ),
            metadata=auth(),
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_random_returns_a_healthy_member(stub) -> None:
    ids = {(await _healthy(stub, port=9300 + i)).service_id for i in range(3)}
    req = pb.ResolveRequest(service_name="api-gateway", load_balance=pb.LOAD_BALANCE_RANDOM)
    seen = {(await stub.Resolve(req, metadata=auth())).service_id for _ in range(60)}
    assert seen == ids


async def test_unknown_load_balance_value_is_rejected(stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Resolve(
            pb.ResolveRequest(service_name="api-gateway", load_balance=42), metadata=auth()
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert str(uuid.UUID(error_info(caught.value)[0].metadata["request_id"]))
