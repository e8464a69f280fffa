"""The server processes of the REST benchmark (``python -m scripts.bench.rest --serve-...``):
a control plane with one healthy instance (and the gateway in-process for ``combined``), or a
gateway alone. Each prints its ports as one JSON line and serves until SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal

SECRET = b"bench-rest-secret-0123456789abcdef!"
SERVICE = "api-gateway"
RESOLVE_GRPC = "/lucid.discovery.v1.DiscoveryService/Resolve"
RESOLVE_REST = f"/api/v1/service-discovery/services/{SERVICE}/resolve"


async def serve_plane(with_gateway: bool) -> None:
    import uuid

    import grpc

    from gateway.server import start_gateway
    from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
    from lucid_cp.api.lucid.discovery.v1 import discovery_pb2_grpc
    from lucid_cp.app import start_control_plane
    from lucid_cp.auth.tokens import Role, mint_token
    from lucid_cp.clock import SystemClock
    from lucid_cp.config import Settings
    from lucid_cp.discovery.settings import DiscoverySettings

    settings = Settings(
        store_url="memory://",
        grpc_addr="127.0.0.1:0",
        jwt_secret=SECRET,
        rate_limits_enabled=False,
        # the instance's host is not a real target
        sections=(DiscoverySettings(health_checks_enabled=False),),
    )
    plane = await start_control_plane(settings)
    token = mint_token(SECRET, SERVICE, Role.SERVICE, SystemClock(), ttl=24 * 3600)
    md = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(plane.grpc_target) as channel:
        stub = discovery_pb2_grpc.DiscoveryServiceStub(channel)
        reg = pb.ServiceRegistration(
            service_id=str(uuid.uuid4()),
            service_name=SERVICE,
            cluster=pb.CLUSTER_API_GATEWAY,
            plane=pb.PLANE_OPS,
            version="1.0.0",
            ttl=3600,
        )
        reg.endpoint.host, reg.endpoint.port = "api-gateway.lucid.onion", 8080
        reg.endpoint.protocol = pb.PROTOCOL_HTTPS
        reg.health_check.endpoint, reg.health_check.interval, reg.health_check.timeout = (
            "/h",
            300,
            5,
        )
        await stub.Register(pb.RegisterRequest(registration=reg), metadata=md)
        await stub.UpdateHealth(
            pb.UpdateHealthRequest(
                service_id=reg.service_id, update=pb.HealthUpdate(status=pb.HEALTH_STATE_HEALTHY)
            ),
            metadata=md,
        )
    gateway = await start_gateway(plane.grpc_target, "127.0.0.1:0") if with_gateway else None
    info = {"grpc_port": plane.grpc_port, "token": token}
    if gateway is not None:
        info["http_port"] = gateway.port
    await _announce_and_wait(info)
    if gateway is not None:
        await gateway.stop()
    await plane.stop(grace=0.5)


async def serve_gateway(target: str) -> None:
    from gateway.server import start_gateway

    gateway = await start_gateway(target, "127.0.0.1:0")
    await _announce_and_wait({"http_port": gateway.port})
    await gateway.stop()


async def _announce_and_wait(info: dict[str, object]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps(info), flush=True)
    await stop.wait()
