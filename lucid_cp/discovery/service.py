"""DiscoveryService servicer: thin. Validation, auth, rate limits and error mapping happen in
the interceptor; each method calls the registry with the caller's principal."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.api.lucid.discovery.v1 import discovery_pb2_grpc
from lucid_cp.discovery.registry import Registry
from lucid_cp.server.context import current_principal


class DiscoveryServicer(discovery_pb2_grpc.DiscoveryServiceServicer):
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    async def Register(
        self, request: pb.RegisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterResponse:
        return await self._registry.register(current_principal(), request.registration)

    async def Deregister(
        self, request: pb.DeregisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeregisterResponse:
        revision = await self._registry.deregister(current_principal(), request.service_id)
        return pb.DeregisterResponse(revision=revision)

    async def UpdateHealth(
        self, request: pb.UpdateHealthRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateHealthResponse:
        health, revision = await self._registry.update_health(
            current_principal(), request.service_id, request.update
        )
        return pb.UpdateHealthResponse(health=health, revision=revision)

    async def Drain(
        self, request: pb.DrainRequest, context: grpc.aio.ServicerContext
    ) -> pb.DrainResponse:
        revision = await self._registry.drain(current_principal(), request.service_id)
        return pb.DrainResponse(revision=revision)

    async def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> pb.HeartbeatResponse:
        connections = request.active_connections if request.HasField("active_connections") else None
        ttl, revision = await self._registry.heartbeat(
            current_principal(), request.service_id, connections
        )
        return pb.HeartbeatResponse(ttl=ttl, revision=revision)

    async def Discover(
        self, request: pb.DiscoverRequest, context: grpc.aio.ServicerContext
    ) -> pb.DiscoverResponse:
        return self._registry.discover(request)

    async def Resolve(
        self, request: pb.ResolveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResolveResponse:
        return self._registry.resolve(request)

    def Watch(
        self, request: pb.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchResponse]:
        # Returns the registry's stream itself: one async-generator layer less per event.
        return self._registry.watch(request)
