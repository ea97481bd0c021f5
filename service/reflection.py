"""Server reflection, v1alpha and v1, that also finds the file declaring a method.

grpcio-reflection answers ``file_containing_symbol`` with
``DescriptorPool.FindFileContainingSymbol``, which finds services, messages,
fields and enum values but not methods, so ``grpcurl describe
tandem.v1.TandemService.Generate`` answers "Symbol not found" (grpc/grpc issue
34743, open since 2023). The servicer here is grpcio-reflection's own, handed
a pool that looks a symbol up as a method when nothing else declares it; the
rest of the protocol is untouched. Once upstream resolves methods, pass no
pool and delete ``MethodResolvingPool``.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
REFLECTION_SERVICES = (reflection.SERVICE_NAME, REFLECTION_V1)


class MethodResolvingPool:
    """A descriptor pool whose ``FindFileContainingSymbol`` also knows ``package.Service.Method``.

    Every other lookup goes to the wrapped pool unchanged.
    """

    def __init__(self, pool: descriptor_pool.DescriptorPool) -> None:
        self._pool = pool

    def __getattr__(self, name: str) -> object:
        return getattr(self._pool, name)

    def FindFileContainingSymbol(self, symbol: str) -> descriptor.FileDescriptor:
        """The file declaring ``symbol``; KeyError when no file does."""
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            return self._pool.FindMethodByName(symbol).containing_service.file


def add_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    """Serve reflection for ``service_names`` (and itself) under both protocol versions.

    v1 and v1alpha differ only in their package name, so one servicer and the
    v1alpha messages serve both paths.
    """
    names = (*service_names, *REFLECTION_SERVICES)
    servicer = reflection.aio.ReflectionServicer(names, pool=MethodResolvingPool(descriptor_pool.Default()))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1_handler = grpc.method_handlers_generic_handler(
        REFLECTION_V1,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((v1_handler,))
