"""The synchronous client.

    from tandem import Client

    with Client("127.0.0.1:50051") as client:
        client.load_model(max_seq_length=512, on_progress=print)
        print(client.generate("The people", sampling={"max_tokens": 8})[0].text)
        reply = client.train_step([{"prompt": "The people", "completion": " say hello"}],
                                  optimizer={"learning_rate": 1e-2})
        print(reply.loss, reply.adapter_version)

Every method has a deadline (``timeout=`` seconds, else the client's
:class:`~tandem.retry.Deadlines`), retries UNAVAILABLE with backoff, and
raises a :class:`~tandem.errors.TandemError` subclass on failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
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


class Client(ClientBase):
    """A blocking client on one channel; use it as a context manager or call :meth:`close`."""

    def _connect(self) -> None:
        self._channel = self.settings.channel()
        self._stub = tandem_pb2_grpc.TandemServiceStub(self._channel)

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _unary(self, method: Callable[..., R], request: Message, timeout: float | None, default: float) -> R:
        attempts = self._attempts(timeout, default)
        while True:
            try:
                return method(request, timeout=attempts.deadline.remaining(), metadata=self._metadata)
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error)
            delay = attempts.wait_before_retry(error)
            if delay is None:
                raise error
            time.sleep(delay)

    def _stream(self, method: Callable[..., Any], request: Message, timeout: float | None, default: float) -> Iterator[Any]:
        """Responses of a server stream; closing the iterator cancels the call."""
        attempts = self._attempts(timeout, default)
        while True:
            call = method(request, timeout=attempts.deadline.remaining(), metadata=self._metadata)
            received = False
            try:
                for response in call:
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
            time.sleep(delay)

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
        events = self._stream(self._stub.LoadModel, load_request(request, fields), timeout, self.settings.deadlines.load_model)
        for event in events:
            model = loaded_model(event)
            if model is not None:
                return model
            if on_progress is not None:
                on_progress(event.progress)
        raise missing_model_error()

    def unload_model(self, *, timeout: float | None = None) -> bool:
        """Release the model; True when one was loaded."""
        reply = self._unary(self._stub.UnloadModel, pb.UnloadModelRequest(), timeout, self.settings.deadlines.call)
        return reply.unloaded

    def get_model(self, *, timeout: float | None = None) -> pb.ModelInfo | None:
        """The loaded model, or None."""
        reply = self._unary(self._stub.GetModel, pb.GetModelRequest(), timeout, self.settings.deadlines.call)
        return reply.model if reply.loaded else None

    def generate_stream(
        self, prompts: Prompts, *, sampling: MessageInput | None = None, adapter: str = "", timeout: float | None = None
    ) -> Iterator[pb.GenerateResponse]:
        """Stream Generate events as the engine produces them.

        ``prompts`` is one text, or a sequence of texts / token-id lists;
        ``adapter`` is "" (the trained adapter), "base", or a saved checkpoint's
        name. Call ``close()`` on the returned iterator (or leave the loop and
        drop it) to cancel the call; the server stops those sequences.
        """
        request = generate_request(prompts, sampling, adapter)
        return self._stream(self._stub.Generate, request, timeout, self.settings.deadlines.generate)

    def generate(self, prompts: Prompts, *, sampling: MessageInput | None = None, adapter: str = "", timeout: float | None = None) -> list[Completion]:
        """Generate and collect whole completions, ordered by prompt then sample index."""
        collector = CompletionCollector()
        for chunk in self.generate_stream(prompts, sampling=sampling, adapter=adapter, timeout=timeout):
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
        return self._unary(self._stub.TrainStep, request, timeout, self.settings.deadlines.train_step)

    def compute_logprobs(self, sequences: Iterable[Sequence[int]], *, adapter: str = "", timeout: float | None = None) -> pb.ComputeLogprobsResponse:
        """Per-token logprobs of token-id sequences under an adapter ("" current, "base", or a saved name)."""
        request = logprobs_request(sequences, adapter)
        return self._unary(self._stub.ComputeLogprobs, request, timeout, self.settings.deadlines.call)

    def save_adapter(self, name: str, *, overwrite: bool = False, timeout: float | None = None) -> pb.AdapterCheckpoint:
        """Save the trained adapter and optimizer state as checkpoint ``name``."""
        request = pb.SaveAdapterRequest(name=name, overwrite=overwrite)
        return self._unary(self._stub.SaveAdapter, request, timeout, self.settings.deadlines.call).checkpoint

    def load_adapter(self, name: str, *, timeout: float | None = None) -> pb.LoadAdapterResponse:
        """Restore checkpoint ``name`` into the trained adapter and optimizer."""
        return self._unary(self._stub.LoadAdapter, pb.LoadAdapterRequest(name=name), timeout, self.settings.deadlines.call)

    def list_adapters(self, *, timeout: float | None = None) -> list[pb.AdapterCheckpoint]:
        """The saved checkpoints."""
        reply = self._unary(self._stub.ListAdapters, pb.ListAdaptersRequest(), timeout, self.settings.deadlines.call)
        return list(reply.checkpoints)

    def delete_adapter(self, name: str, *, timeout: float | None = None) -> None:
        """Delete checkpoint ``name``."""
        self._unary(self._stub.DeleteAdapter, pb.DeleteAdapterRequest(name=name), timeout, self.settings.deadlines.call)
