"""Reflection, v1alpha and v1, names the file declaring any symbol a tool asks for, methods included."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from tests.support.server import ServerProcess

Reflect = Callable[[str], reflection_pb2.ServerReflectionResponse]
PROTOCOLS = ("grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection")
SYMBOLS = {
    "tandem.v1.TandemService": "tandem/v1/tandem.proto",
    "tandem.v1.TandemService.Generate": "tandem/v1/tandem.proto",
    "tandem.v1.GenerateRequest": "tandem/v1/tandem.proto",
    "tandem.v1.GenerateRequest.prompts": "tandem/v1/tandem.proto",
    "tandem.v1.FINISH_REASON_STOP": "tandem/v1/tandem.proto",
    "grpc.health.v1.Health.Check": "grpc_health/v1/health.proto",
}


@pytest.fixture(params=PROTOCOLS)
def reflect(request: pytest.FixtureRequest, server: ServerProcess) -> Iterator[Reflect]:
    """Ask one file_containing_symbol question over the protocol version of the parameter."""
    with grpc.insecure_channel(server.address) as channel:
        info = channel.stream_stream(
            f"/{request.param}/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )

        def ask(symbol: str) -> reflection_pb2.ServerReflectionResponse:
            (reply,) = info(iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)]), timeout=10)
            return reply

        yield ask


@pytest.mark.parametrize("symbol", SYMBOLS)
def test_file_containing_symbol_names_the_declaring_file_first(reflect: Reflect, symbol: str) -> None:
    reply = reflect(symbol)
    assert reply.HasField("file_descriptor_response"), reply.error_response
    declaring, *dependencies = reply.file_descriptor_response.file_descriptor_proto
    assert descriptor_pb2.FileDescriptorProto.FromString(declaring).name == SYMBOLS[symbol]
    assert all(descriptor_pb2.FileDescriptorProto.FromString(d).name != SYMBOLS[symbol] for d in dependencies)


def test_the_described_method_is_in_the_file(reflect: Reflect) -> None:
    reply = reflect("tandem.v1.TandemService.Generate")
    file = descriptor_pb2.FileDescriptorProto.FromString(reply.file_descriptor_response.file_descriptor_proto[0])
    (service,) = [s for s in file.service if s.name == "TandemService"]
    (generate,) = [m for m in service.method if m.name == "Generate"]
    assert generate.input_type == ".tandem.v1.GenerateRequest" and generate.server_streaming


@pytest.mark.parametrize("symbol", ["tandem.v1.TandemService.NoSuchMethod", "tandem.v1.NoSuchMessage", "tandem"])
def test_unknown_symbol_is_not_found(reflect: Reflect, symbol: str) -> None:
    reply = reflect(symbol)
    assert reply.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert reply.original_request.file_containing_symbol == symbol
