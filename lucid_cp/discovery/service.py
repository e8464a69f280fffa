"""DiscoveryService servicer: thin. Authentication, rate limits, validation and error mapping
happen in the policy interceptor, which hands each method the request and a ``Call`` (the
authenticated principal); each method calls the registry."""

from __future__ import annotations

from collections.abc import AsyncIterator

from lucid_cp.api.lucid.discovery.v1 import discovery_pb2 as pb
from lucid_cp.call import Call
from lucid_cp.discovery.registry import Registry


class DiscoveryServicer:
    """Implements every method of lucid.discovery.v1.DiscoveryService."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    async def Register(self, request: pb.RegisterRequest, call: Call) -> pb.RegisterResponse:
        return await self._registry.register(call.principal, request.registration)

    async def Deregister(self, request: pb.DeregisterRequest, call: Call) -> pb.DeregisterResponse:
        revision = await self._registry.deregister(call.principal, request.service_id)
        return pb.DeregisterResponse(revision=revision)

    async def UpdateHealth(
        self, request: pb.UpdateHealthRequest, call: Call
    ) -> pb.UpdateHealthResponse:
        health, revision = await self._registry.update_health(
            call.principal, request.service_id, request.update
        )
        return pb.UpdateHealthResponse(health=health, revision=revision)

    async def Drain(self, request: pb.DrainRequest, call: Call) -> pb.DrainResponse:
        revision = await self._registry.drain(call.principal, request.service_id)
        return pb.DrainResponse(revision=revision)

    async def Heartbeat(self, request: pb.HeartbeatRequest, call: Call) -> pb.HeartbeatResponse:
        connections = request.active_connections if request.HasField("active_connections") else None
        ttl, revision = await self._registry.heartbeat(
            call.principal, request.service_id, connections
        )
        return pb.HeartbeatResponse(ttl=ttl, revision=revision)

    async def GetInstance(
        self, request: pb.GetInstanceRequest, call: Call
    ) -> pb.GetInstanceResponse:
        return pb.GetInstanceResponse(instance=self._registry.get_instance(request.service_id))

    async def Discover(self, request: pb.DiscoverRequest, call: Call) -> pb.DiscoverResponse:
        return self._registry.discover(request)

    async def Resolve(self, request: pb.ResolveRequest, call: Call) -> pb.ResolveResponse:
        return self._registry.resolve(request)

    def Watch(self, request: pb.WatchRequest, call: Call) -> AsyncIterator[pb.WatchResponse]:
        # The subscription is the stream (one async-generator layer less per event); the call
        # closes it when it ends, however it ends.
        subscription = self._registry.watch(request)
        call.on_done(subscription.close)
        return subscription
