"""The asyncio client: the same methods as :class:`tandem.Client`, as coroutines and async iterators.

    from tandem.aio import AsyncClient

    async with AsyncClient("127.0.0.1:50051") as client:
        await client.load_model(on_progress=print)
        async for chunk in client.generate_stream(["a", "b"], sampling={"max_tokens": 8}):
            print(chunk.prompt_index, chunk.text)

Concurrent calls on one client share its channel; the server batches
concurrent Generate calls together.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from tandem.client_base import ClientBase, ProgressCallback, loaded_model, missing_model_error
from tandem.completions import Completion, CompletionCollector
from tandem.errors import from_rpc_error
from tandem.requests import MessageInput, Prompts, generate_request, load_request, logprobs_request, train_request
from tandem.v1 import tandem_pb2 as pb
from tandem.v1 import tandem_pb2_grpc

R = TypeVar("R", bound=Message)


class AsyncClient(ClientBase):
    """An asyncio client on one ``grpc.aio`` channel; use ``async with`` or await :meth:`close`."""

    def _connect(self) -> None:
        self._channel = self.settings.aio_channel()
        self._stub = tandem_pb2_grpc.TandemServiceStub(self._channel)

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _unary(self, method: Callable[..., Awaitable[R]], request: Message, timeout: float | None, default: float) -> R:
        attempts = self._attempts(timeout, default)
        while True:
            try:
                return await method(request, timeout=attempts.deadline.remaining(), metadata=self._metadata)
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error)
            delay = attempts.wait_before_retry(error)
            if delay is None:
                raise error
            await asyncio.sleep(delay)

    async def _stream(self, method: Callable[..., Any], request: Message, timeout: float | None, default: float) -> AsyncIterator[Any]:
        """Responses of a server stream; ``aclose()`` (or cancelling the task) cancels the call."""
        attempts = self._attempts(timeout, default)
        while True:
            call = method(request, timeout=attempts.deadline.remaining(), metadata=self._metadata)
            received = False
            try:
                async for response in call:
                    received = True
                    yield response
                return
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error)
            finally:
                call.cancel()
            delay = None if received else attempts.wait_before_retry(error)
            if delay is None:
                raise error
            await asyncio.sleep(delay)

    async def load_model(
        self,
        request: MessageInput | None = None,
        *,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        **fields: Any,
    ) -> pb.ModelInfo:
        """Load a model and return it; see :meth:`tandem.Client.load_model`."""
        events = self._stream(self._stub.LoadModel, load_request(request, fields), timeout, self.settings.deadlines.load_model)
        async for event in events:
            model = loaded_model(event)
            if model is not None:
                return model
            if on_progress is not None:
                on_progress(event.progress)
        raise missing_model_error()

    async def unload_model(self, *, timeout: float | None = None) -> bool:
        """Release the model; True when one was loaded."""
        reply = await self._unary(self._stub.UnloadModel, pb.UnloadModelRequest(), timeout, self.settings.deadlines.call)
        return reply.unloaded

    async def get_model(self, *, timeout: float | None = None) -> pb.ModelInfo | None:
        """The loaded model, or None."""
        reply = await self._unary(self._stub.GetModel, pb.GetModelRequest(), timeout, self.settings.deadlines.call)
        return reply.model if reply.loaded else None

    def generate_stream(
        self, prompts: Prompts, *, sampling: MessageInput | None = None, adapter: str = "", timeout: float | None = None
    ) -> AsyncIterator[pb.GenerateResponse]:
        """Stream Generate events; see :meth:`tandem.Client.generate_stream`. ``aclose()`` cancels."""
        request = generate_request(prompts, sampling, adapter)
        return self._stream(self._stub.Generate, request, timeout, self.settings.deadlines.generate)

    async def generate(self, prompts: Prompts, *, sampling: MessageInput | None = None, adapter: str = "", timeout: float | None = None) -> list[Completion]:
        """Generate and collect whole completions, ordered by prompt then sample index."""
        collector = CompletionCollector()
        async for chunk in self.generate_stream(prompts, sampling=sampling, adapter=adapter, timeout=timeout):
            collector.add(chunk)
        return collector.completions()

    async def train_step(
        self,
        sequences: Iterable[MessageInput],
        *,
        loss: MessageInput | str | None = None,
        optimizer: MessageInput | None = None,
        accumulate: bool = False,
        timeout: float | None = None,
    ) -> pb.TrainStepResponse:
        """Train on one micro-batch; see :meth:`tandem.Client.train_step`."""
        request = train_request(sequences, loss, optimizer, accumulate)
        return await self._unary(self._stub.TrainStep, request, timeout, self.settings.deadlines.train_step)

    async def compute_logprobs(self, sequences: Iterable[Sequence[int]], *, adapter: str = "", timeout: float | None = None) -> pb.ComputeLogprobsResponse:
        """Per-token logprobs of token-id sequences under an adapter ("" current, "base", or a saved name)."""
        request = logprobs_request(sequences, adapter)
        return await self._unary(self._stub.ComputeLogprobs, request, timeout, self.settings.deadlines.call)

    async def save_adapter(self, name: str, *, overwrite: bool = False, timeout: float | None = None) -> pb.AdapterCheckpoint:
        """Save the trained adapter and optimizer state as checkpoint ``name``."""
        request = pb.SaveAdapterRequest(name=name, overwrite=overwrite)
        return (await self._unary(self._stub.SaveAdapter, request, timeout, self.settings.deadlines.call)).checkpoint

    async def load_adapter(self, name: str, *, timeout: float | None = None) -> pb.LoadAdapterResponse:
        """Restore checkpoint ``name`` into the trained adapter and optimizer."""
        return await self._unary(self._stub.LoadAdapter, pb.LoadAdapterRequest(name=name), timeout, self.settings.deadlines.call)

    async def list_adapters(self, *, timeout: float | None = None) -> list[pb.AdapterCheckpoint]:
        """The saved checkpoints."""
        reply = await self._unary(self._stub.ListAdapters, pb.ListAdaptersRequest(), timeout, self.settings.deadlines.call)
        return list(reply.checkpoints)

    async def delete_adapter(self, name: str, *, timeout: float | None = None) -> None:
        """Delete checkpoint ``name``."""
        await self._unary(self._stub.DeleteAdapter, pb.DeleteAdapterRequest(name=name), timeout, self.settings.deadlines.call)
