"""The one shared grpc.aio channel to the backend and the per-route multicallables on it."""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.routes import Route


class Backend:
    """Owns (or borrows) one grpc.aio channel.

    A target string creates the channel lazily inside the running event loop on first use (an
    aio channel is bound to its loop); ``close`` closes only a channel this object created.
    """

    def __init__(self, target: str | grpc.aio.Channel, *, max_message_bytes: int) -> None:
        self._target = target
        self._options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # After a control-plane restart, reconnect within seconds (gRPC's default backoff
            # grows to two minutes, during which every REST call would answer 503).
            ("grpc.max_reconnect_backoff_ms", 5000),
        ]
        self._channel: grpc.aio.Channel | None = None if isinstance(target, str) else target
        self._owned = isinstance(target, str)
        self._unary: dict[str, Any] = {}
        self._streams: dict[str, Any] = {}

    @property
    def channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            assert isinstance(self._target, str)
            self._channel = grpc.aio.insecure_channel(self._target, options=self._options)
        return self._channel

    def unary(self, route: Route) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any]:
        call = self._unary.get(route.grpc_path)
        if call is None:
            call = self._unary[route.grpc_path] = self.channel.unary_unary(
                route.grpc_path,
                request_serializer=route.request_class.SerializeToString,
                response_deserializer=route.response_class.FromString,
            )
        return call

    def server_stream(self, route: Route) -> grpc.aio.UnaryStreamMultiCallable[Any, Any]:
        call = self._streams.get(route.grpc_path)
        if call is None:
            call = self._streams[route.grpc_path] = self.channel.unary_stream(
                route.grpc_path,
                request_serializer=route.request_class.SerializeToString,
                response_deserializer=route.response_class.FromString,
            )
        return call

    async def serving(self, timeout: float) -> bool:
        """True if the backend answers grpc.health.v1 Check with SERVING."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def close(self) -> None:
        if self._owned and self._channel is not None:
            channel, self._channel = self._channel, None
            self._unary.clear()
            self._streams.clear()
            await channel.close()
