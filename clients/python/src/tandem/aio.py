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

from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from google.protobuf.message import Message

from tandem.client_base import ClientBase, ProgressCallback, loaded_model, missing_model_error
from tandem.completions import Completion, CompletionCollector
from tandem.connection import ASYNCIO
from tandem.requests import (
    MessageInput,
    Prompts,
    TokenizeItem,
    detokenize_request,
    generate_request,
    load_request,
    logprobs_request,
    tokenize_request,
    train_request,
)
from tandem.v1 import tandem_pb2 as pb


class AsyncClient(ClientBase):
    """An asyncio client on ``grpc.aio`` channels; use ``async with`` or await :meth:`close`."""

    _channel_kind = ASYNCIO

    async def close(self) -> None:
        """Close the channels; calls in flight are cancelled."""
        for channel in self._routes.channels:
            await channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _unary(self, rpc: str, request: Message, timeout: float | None) -> Any:
        """The reply of the unary method ``rpc``, retried on UNAVAILABLE."""
        async for attempt in self._retrying(rpc, timeout):
            with attempt:
                return await attempt.call(rpc, request)

    async def _stream(self, rpc: str, request: Message, timeout: float | None) -> AsyncIterator[Any]:
        """Responses of the server stream ``rpc``; ``aclose()`` (or cancelling the task) cancels the call."""
        async for attempt in self._retrying(rpc, timeout):
            with attempt:
                call = attempt.call(rpc, request)
                try:
                    async for response in call:
                        attempt.delivered()
                        yield response
                    return
                finally:
                    call.cancel()

    async def load_model(
        self,
        request: MessageInput | None = None,
        *,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        **fields: Any,
    ) -> pb.ModelInfo:
        """Load a model and return it; see :meth:`tandem.Client.load_model`."""
        events = self._stream("LoadModel", load_request(request, fields), timeout)
        async for event in events:
            model = loaded_model(event)
            if model is not None:
                return model
            if on_progress is not None:
                on_progress(event.progress)
        raise missing_model_error()

    async def unload_model(self, *, timeout: float | None = None) -> bool:
        """Release the model; True when one was loaded."""
        reply = await self._unary("UnloadModel", pb.UnloadModelRequest(), timeout)
        return reply.unloaded

    async def get_model(self, *, timeout: float | None = None) -> pb.ModelInfo | None:
        """The loaded model, or None."""
        reply = await self._unary("GetModel", pb.GetModelRequest(), timeout)
        return reply.model if reply.loaded else None

    def generate_stream(
        self, prompts: Prompts, *, sampling: MessageInput | None = None, adapter: str = "", min_adapter_version: int | None = None,
        whole_samples: bool = False, timeout: float | None = None,
    ) -> AsyncIterator[pb.GenerateResponse]:
        """Stream Generate events; see :meth:`tandem.Client.generate_stream`. ``aclose()`` cancels."""
        request = generate_request(prompts, sampling, adapter, min_adapter_version, whole_samples)
        return self._stream("Generate", request, timeout)

    async def generate(
        self, prompts: Prompts, *, sampling: MessageInput | None = None, adapter: str = "", min_adapter_version: int | None = None, timeout: float | None = None
    ) -> list[Completion]:
        """Generate and collect whole completions; see :meth:`tandem.Client.generate` (restarted whole on UNAVAILABLE)."""
        request = generate_request(prompts, sampling, adapter, min_adapter_version, whole_samples=True)
        async for attempt in self._retrying("Generate", timeout):
            with attempt:
                collector = CompletionCollector()
                async for chunk in attempt.call("Generate", request):
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
        return await self._unary("TrainStep", request, timeout)

    async def compute_logprobs(self, sequences: Iterable[Sequence[int]], *, adapter: str = "", timeout: float | None = None) -> pb.ComputeLogprobsResponse:
        """Per-token logprobs of token-id sequences under an adapter ("" current, "base", or a saved name)."""
        request = logprobs_request(sequences, adapter)
        return await self._unary("ComputeLogprobs", request, timeout)

    async def save_adapter(self, name: str, *, overwrite: bool = False, timeout: float | None = None) -> pb.AdapterCheckpoint:
        """Save the trained adapter and optimizer state as checkpoint ``name``."""
        request = pb.SaveAdapterRequest(name=name, overwrite=overwrite)
        return (await self._unary("SaveAdapter", request, timeout)).checkpoint

    async def load_adapter(self, name: str, *, timeout: float | None = None) -> pb.LoadAdapterResponse:
        """Restore checkpoint ``name`` into the trained adapter and optimizer."""
        return await self._unary("LoadAdapter", pb.LoadAdapterRequest(name=name), timeout)

    async def list_adapters(self, *, timeout: float | None = None) -> list[pb.AdapterCheckpoint]:
        """The saved checkpoints."""
        reply = await self._unary("ListAdapters", pb.ListAdaptersRequest(), timeout)
        return list(reply.checkpoints)

    async def delete_adapter(self, name: str, *, timeout: float | None = None) -> None:
        """Delete checkpoint ``name``."""
        await self._unary("DeleteAdapter", pb.DeleteAdapterRequest(name=name), timeout)

    async def tokenize(
        self,
        inputs: str | Sequence[TokenizeItem],
        *,
        add_special_tokens: bool | None = None,
        add_generation_prompt: bool = False,
        return_offsets: bool = False,
        timeout: float | None = None,
    ) -> list[pb.TokenizedInput]:
        """Token ids of texts or conversations with the served model's own tokenizer, one result per input.

        ``inputs`` is one text, or a sequence of texts and conversations (a
        conversation is a list of ``{"role": ..., "content": ...}`` messages,
        rendered with the model's chat template). Text gets the tokenizer's
        special tokens (BOS) as a Generate text prompt does, unless
        ``add_special_tokens=False``; ``return_offsets`` adds each token's
        character span.
        """
        request = tokenize_request(inputs, add_special_tokens, add_generation_prompt, return_offsets)
        return list((await self._unary("Tokenize", request, timeout)).results)

    async def detokenize(self, sequences: Iterable[Sequence[int]], *, skip_special_tokens: bool = False, timeout: float | None = None) -> list[str]:
        """The text of each token-id list, with the served model's tokenizer."""
        request = detokenize_request(sequences, skip_special_tokens)
        return list((await self._unary("Detokenize", request, timeout)).texts)
