"""gRPC server reflection v1 (``grpc.reflection.v1.ServerReflection``), served next to v1alpha.

grpcio-reflection ships only v1alpha; grpcurl and other current tools ask for v1 first. The two
protocols differ only in their package name: the messages are wire-identical, so each v1 request
is re-parsed as v1alpha, answered by grpcio-reflection's own servicer, and its answer re-parsed
as v1. The v1 proto is ``proto/grpc/reflection/v1/reflection.proto``.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable

import grpc
from grpc_reflection.v1alpha import reflection as reflection_v1alpha
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2

from lucid_cp.api.grpc.reflection.v1 import reflection_pb2 as v1_pb2
from lucid_cp.api.grpc.reflection.v1 import reflection_pb2_grpc as v1_pb2_grpc

SERVICE_NAME: str = v1_pb2.DESCRIPTOR.services_by_name["ServerReflection"].full_name


class ReflectionV1Servicer(v1_pb2_grpc.ServerReflectionServicer):
    """Answers v1 reflection requests with grpcio-reflection's v1alpha implementation."""

    def __init__(self, service_names: Iterable[str]) -> None:
        self._v1alpha = reflection_v1alpha.aio.ReflectionServicer(list(service_names))

    async def ServerReflectionInfo(
        self,
        request_iterator: AsyncIterable[v1_pb2.ServerReflectionRequest],
        context: grpc.aio.ServicerContext[
            v1_pb2.ServerReflectionRequest, v1_pb2.ServerReflectionResponse
        ],
    ) -> AsyncIterator[v1_pb2.ServerReflectionResponse]:
        async def as_v1alpha() -> AsyncIterator[v1alpha_pb2.ServerReflectionRequest]:
            async for request in request_iterator:
                yield v1alpha_pb2.ServerReflectionRequest.FromString(request.SerializeToString())

        async for response in self._v1alpha.ServerReflectionInfo(as_v1alpha(), context):
            yield v1_pb2.ServerReflectionResponse.FromString(response.SerializeToString())


def enable_server_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serves reflection v1 and v1alpha on ``server``, both listing ``service_names`` and the
    two reflection services themselves."""
    names = [*service_names, reflection_v1alpha.SERVICE_NAME, SERVICE_NAME]
    reflection_v1alpha.enable_server_reflection(names, server)
    v1_pb2_grpc.add_ServerReflectionServicer_to_server(ReflectionV1Servicer(names), server)
