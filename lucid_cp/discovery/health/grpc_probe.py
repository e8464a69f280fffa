"""gRPC health probe: grpc.health.v1 Health/Check with ``grpcCheck.service``.

The only module of the checker that imports grpc (as a client); the wiring injects it. One
channel per instance is cached while checks pass; a failed check drops it, so the next round
connects afresh instead of waiting out gRPC's reconnect backoff, and ``release`` closes it when
the instance goes. For grpcs the server is verified against ``endpoint.tls.certAuthority`` when
given, else against the system roots (grpc has no unverified TLS mode); no client certificate
is presented. Proxies from the environment are ignored: checks go straight to the instance.
"""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.discovery.health.probes import ProbeResult, unresolvable

_SERVING = health_pb2.HealthCheckResponse.SERVING
_Key = tuple[str, int, int, str]


def _target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcHealthProber:
    def __init__(self, user_agent: str = "lucid-health-check") -> None:
        self._options = [
            ("grpc.primary_user_agent", user_agent),
            ("grpc.enable_http_proxy", 0),
            ("grpc.enable_retries", 0),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        self._channels: dict[str, tuple[_Key, grpc.aio.Channel]] = {}

    def _channel(self, instance: pb.ServiceInstance) -> grpc.aio.Channel:
        ep = instance.endpoint
        key: _Key = (ep.host, ep.port, ep.protocol, ep.tls.cert_authority)
        cached = self._channels.get(instance.service_id)
        if cached is not None and cached[0] == key:
            return cached[1]
        target = _target(ep.host, ep.port)
        if ep.protocol == pb.PROTOCOL_GRPCS:
            roots = ep.tls.cert_authority.encode() if ep.tls.cert_authority else None
            credentials = grpc.ssl_channel_credentials(root_certificates=roots)
            channel = grpc.aio.secure_channel(target, credentials, options=self._options)
        else:
            channel = grpc.aio.insecure_channel(target, options=self._options)
        self._channels[instance.service_id] = (key, channel)
        return channel

    async def probe(self, instance: pb.ServiceInstance, timeout: float) -> ProbeResult:
        if (reserved := unresolvable(instance.endpoint.host)) is not None:
            return reserved
        service = instance.health_check.grpc_check.service
        loop = asyncio.get_running_loop()
        started = loop.time()
        client = health_pb2_grpc.HealthStub(self._channel(instance))
        try:
            response = await client.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            elapsed = loop.time() - started
            await self.release(instance.service_id)
            code = exc.code()
            if code is grpc.StatusCode.DEADLINE_EXCEEDED:
                error = f"timed out after {timeout:g}s"
            else:
                error = f"grpc {code.name}: {exc.details() or ''}".rstrip(": ")
            return ProbeResult(False, elapsed, error, {"grpcCode": code.name})
        elapsed = loop.time() - started
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        if response.status == _SERVING:
            return ProbeResult(True, elapsed, detail={"grpcStatus": status})
        what = f"service {service!r}" if service else "server"
        return ProbeResult(False, elapsed, f"{what} reports {status}", {"grpcStatus": status})

    async def release(self, service_id: str) -> None:
        cached = self._channels.pop(service_id, None)
        if cached is not None:
            await cached[1].close()

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for _, channel in channels.values():
            await channel.close()
