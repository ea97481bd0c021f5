"""TandemService RPCs: protobuf in, domain call on the controller, protobuf out. Nothing else.

Errors are raised as domain exceptions and mapped to status codes by the
server's error interceptor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

import grpc
from tandem.v1 import tandem_pb2 as pb
from tandem.v1 import tandem_pb2_grpc

from service import convert
from service.runtime.controller import Controller
from service.runtime.specs import RoleDescription


class TandemServicer(tandem_pb2_grpc.TandemServiceServicer):
    """The gRPC face of the controller."""

    def __init__(self, controller: Controller, describe_role: Callable[[], RoleDescription]) -> None:
        self._controller = controller
        self._describe_role = describe_role

    async def LoadModel(self, request: pb.LoadModelRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.LoadModelResponse]:
        """Load a model; stream progress, then the loaded model."""
        async with aclosing(self._controller.load_model(convert.load_spec(request))) as events:
            async for event in events:
                yield convert.load_event(event)

    async def UnloadModel(self, request: pb.UnloadModelRequest, context: grpc.aio.ServicerContext) -> pb.UnloadModelResponse:
        """Release the model."""
        return pb.UnloadModelResponse(unloaded=await self._controller.unload_model())

    async def GetModel(self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext) -> pb.GetModelResponse:
        """Describe what is loaded, and this server's role."""
        return convert.get_model_response(await self._controller.describe(), self._describe_role())

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.GenerateResponse]:
        """Stream samples as the engine produces them."""
        async with aclosing(self._controller.generate(convert.generate_spec(request, context.time_remaining()))) as chunks:
            async for chunk in chunks:
                yield convert.sample_chunk(chunk)

    async def TrainStep(self, request: pb.TrainStepRequest, context: grpc.aio.ServicerContext) -> pb.TrainStepResponse:
        """Run one training micro-batch / optimizer step."""
        return convert.train_response(await self._controller.train_step(convert.train_spec(request)))

    async def ComputeLogprobs(self, request: pb.ComputeLogprobsRequest, context: grpc.aio.ServicerContext) -> pb.ComputeLogprobsResponse:
        """Logprobs of given sequences under an adapter."""
        logprobs, version = await self._controller.compute_logprobs([list(s.ids) for s in request.sequences], request.adapter)
        return pb.ComputeLogprobsResponse(sequences=[pb.SequenceLogprobs(logprobs=lp) for lp in logprobs], adapter_version=version)

    async def SaveAdapter(self, request: pb.SaveAdapterRequest, context: grpc.aio.ServicerContext) -> pb.SaveAdapterResponse:
        """Write the trained adapter and optimizer state as a named checkpoint, atomically."""
        checkpoint = await self._controller.save_adapter(request.name, request.overwrite)
        return pb.SaveAdapterResponse(checkpoint=convert.adapter_checkpoint(checkpoint))

    async def LoadAdapter(self, request: pb.LoadAdapterRequest, context: grpc.aio.ServicerContext) -> pb.LoadAdapterResponse:
        """Restore a named checkpoint into the trained adapter and optimizer."""
        return convert.load_adapter_response(await self._controller.load_adapter(request.name))

    async def ListAdapters(self, request: pb.ListAdaptersRequest, context: grpc.aio.ServicerContext) -> pb.ListAdaptersResponse:
        """List the saved checkpoints by name."""
        checkpoints = await self._controller.list_adapters()
        return pb.ListAdaptersResponse(checkpoints=[convert.adapter_checkpoint(c) for c in checkpoints])

    async def DeleteAdapter(self, request: pb.DeleteAdapterRequest, context: grpc.aio.ServicerContext) -> pb.DeleteAdapterResponse:
        """Delete a saved checkpoint."""
        await self._controller.delete_adapter(request.name)
        return pb.DeleteAdapterResponse()

    async def Tokenize(self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext) -> pb.TokenizeResponse:
        """Token ids (and offsets) of texts or chat conversations, with the loaded model's tokenizer."""
        return convert.tokenize_response(await self._controller.tokenize(convert.tokenize_spec(request)))

    async def Detokenize(self, request: pb.DetokenizeRequest, context: grpc.aio.ServicerContext) -> pb.DetokenizeResponse:
        """Text of token id lists, with the loaded model's tokenizer."""
        return pb.DetokenizeResponse(texts=await self._controller.detokenize(convert.detokenize_spec(request)))
