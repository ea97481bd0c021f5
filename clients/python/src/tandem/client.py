"""The synchronous client.

    from tandem import Client

    with Client("127.0.0.1:50051") as client:
        client.load_model(max_seq_length=512, on_progress=print)
        print(client.generate("The people", sampling={"max_tokens": 8})[0].text)
        reply = client.train_step([{"prompt": "The people", "completion": " say hello"}],
                                  optimizer={"learning_rate": 1e-2})
        print(reply.loss, reply.adapter_version)

With samplers (``Client("trainer:50051", samplers="dns:///tandem-sampler:50051")``
or a list of addresses) sampling calls go to them and the rest to the trainer
(:mod:`tandem.routing`). Every method has a deadline (``timeout=`` seconds,
else the client's :class:`~tandem.retry.Deadlines`), retries UNAVAILABLE on
another replica or after a backoff (:class:`~tandem.retry.Retrying`), and
raises a :class:`~tandem.errors.TandemError` subclass on failure.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from google.protobuf.message import Message

from tandem.client_base import ClientBase, ProgressCallback, loaded_model, missing_model_error
from tandem.completions import Completion, CompletionCollector
from tandem.connection import BLOCKING
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


class Client(ClientBase):
    """A blocking client; use it as a context manager or call :meth:`close`."""

    _channel_kind = BLOCKING

    def close(self) -> None:
        """Close the channels; calls in flight are cancelled."""
        for channel in self._routes.channels:
            channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _unary(self, rpc: str, request: Message, timeout: float | None) -> Any:
        """The reply of the unary method ``rpc``, retried on UNAVAILABLE."""
        for attempt in self._retrying(rpc, timeout):
            with attempt:
                return attempt.call(rpc, request)

    def _stream(self, rpc: str, request: Message, timeout: float | None) -> Iterator[Any]:
        """Responses of the server stream ``rpc``; closing the iterator cancels the call."""
        for attempt in self._retrying(rpc, timeout):
            with attempt:
                call = attempt.call(rpc, request)
                try:
                    for response in call:
                        attempt.delivered()
                        yield response
                    return
                finally:
                    call.cancel()

    def load_model(
        self,
        request: MessageInput | None = None,
        *,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        **fields: Any,
    ) -> pb.ModelInfo:
        """Load a model (replacing any loaded one) and return it; ``on_progress`` sees every progress event.

        Pass a LoadModelRequest (or its JSON form), or its fields as keywords:
        ``load_model(max_seq_length=512, lora={"rank": 16})``. No arguments
        loads the built-in tiny model with the server's defaults.
        """
        events = self._stream("LoadModel", load_request(request, fields), timeout)
        for event in events:
            model = loaded_model(event)
            if model is not None:
                return model
            if on_progress is not None:
                on_progress(event.progress)
        raise missing_model_error()

    def unload_model(self, *, timeout: float | None = None) -> bool:
        """Release the model; True when one was loaded."""
        reply = self._unary("UnloadModel", pb.UnloadModelRequest(), timeout)
        return reply.unloaded

    def get_model(self, *, timeout: float | None = None) -> pb.ModelInfo | None:
        """The loaded model, or None."""
        reply = self._unary("GetModel", pb.GetModelRequest(), timeout)
        return reply.model if reply.loaded else None

    def generate_stream(
        self, prompts: Prompts, *, sampling: MessageInput | None = None, adapter: str = "", min_adapter_version: int | None = None,
        whole_samples: bool = False, timeout: float | None = None,
    ) -> Iterator[pb.GenerateResponse]:
        """Stream Generate events as the engine produces them.

        ``prompts`` is one text, or a sequence of texts / token-id lists;
        ``adapter`` is "" (the trained adapter), "base", or a saved checkpoint's
        name; ``min_adapter_version``: sample only from that adapter version or
        a newer one (a sampler behind it waits for it, within the deadline);
        ``whole_samples``: each sample arrives once, whole, when it finishes,
        instead of its tokens as they come (fewer messages). Call ``close()``
        on the returned iterator (or leave the loop and drop it) to cancel the
        call; the server stops those sequences. A stream
        that fails with UNAVAILABLE before its first event is retried (on
        another sampler where there are several); once an event has been
        yielded, the failure is raised: starting again would sample anew and
        repeat what was already delivered.
        """
        request = generate_request(prompts, sampling, adapter, min_adapter_version, whole_samples)
        return self._stream("Generate", request, timeout)

    def generate(
        self, prompts: Prompts, *, sampling: MessageInput | None = None, adapter: str = "", min_adapter_version: int | None = None, timeout: float | None = None
    ) -> list[Completion]:
        """Generate and collect whole completions, ordered by prompt then sample index.

        Arguments as for :meth:`generate_stream`. The request asks for whole
        samples (``whole_samples``): the server sends each sample once, when it
        finishes, which costs both sides less than a stream of its tokens.
        Nothing reaches the caller before the call ends, so a stream that
        breaks with UNAVAILABLE part-way is started again from the beginning
        (on another sampler where there are several); what the broken stream
        produced is dropped, never mixed in.
        """
        request = generate_request(prompts, sampling, adapter, min_adapter_version, whole_samples=True)
        for attempt in self._retrying("Generate", timeout):
            with attempt:
                collector = CompletionCollector()
                for chunk in attempt.call("Generate", request):
                    collector.add(chunk)
                return collector.completions()

    def train_step(
        self,
        sequences: Iterable[MessageInput],
        *,
        loss: MessageInput | str | None = None,
        optimizer: MessageInput | None = None,
        accumulate: bool = False,
        timeout: float | None = None,
    ) -> pb.TrainStepResponse:
        """Train on one micro-batch; unless ``accumulate``, apply an optimizer step.

        ``sequences`` are TrainSequence messages or their JSON form
        (``{"prompt": ..., "completion": ...}`` or ``{"token_ids": [...]}``);
        ``loss`` a LossConfig or "cross_entropy" / "importance_sampling" / "ppo_clip".
        UNAVAILABLE is retried like on every call: it almost always means the
        step never reached the model (see docs/clients.md for at-most-once).
        """
        request = train_request(sequences, loss, optimizer, accumulate)
        return self._unary("TrainStep", request, timeout)

    def compute_logprobs(self, sequences: Iterable[Sequence[int]], *, adapter: str = "", timeout: float | None = None) -> pb.ComputeLogprobsResponse:
        """Per-token logprobs of token-id sequences under an adapter ("" current, "base", or a saved name)."""
        request = logprobs_request(sequences, adapter)
        return self._unary("ComputeLogprobs", request, timeout)

    def save_adapter(self, name: str, *, overwrite: bool = False, timeout: float | None = None) -> pb.AdapterCheckpoint:
        """Save the trained adapter and optimizer state as checkpoint ``name``."""
        request = pb.SaveAdapterRequest(name=name, overwrite=overwrite)
        return self._unary("SaveAdapter", request, timeout).checkpoint

    def load_adapter(self, name: str, *, timeout: float | None = None) -> pb.LoadAdapterResponse:
        """Restore checkpoint ``name`` into the trained adapter and optimizer."""
        return self._unary("LoadAdapter", pb.LoadAdapterRequest(name=name), timeout)

    def list_adapters(self, *, timeout: float | None = None) -> list[pb.AdapterCheckpoint]:
        """The saved checkpoints."""
        reply = self._unary("ListAdapters", pb.ListAdaptersRequest(), timeout)
        return list(reply.checkpoints)

    def delete_adapter(self, name: str, *, timeout: float | None = None) -> None:
        """Delete checkpoint ``name``."""
        self._unary("DeleteAdapter", pb.DeleteAdapterRequest(name=name), timeout)

    def tokenize(
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
        return list((self._unary("Tokenize", request, timeout)).results)

    def detokenize(self, sequences: Iterable[Sequence[int]], *, skip_special_tokens: bool = False, timeout: float | None = None) -> list[str]:
        """The text of each token-id list, with the served model's tokenizer."""
        request = detokenize_request(sequences, skip_special_tokens)
        return list((self._unary("Detokenize", request, timeout)).texts)
