"""Where the loaded model lives and how the controller reaches it: the ModelHost protocol and the engine choice.

A host holds one loaded model and its sampling engine. The controller
validates on the event loop and hands work to the host; the host keeps the
ordering promise (a Generate that starts after a TrainStep returned samples
from the new adapter, every sample from one adapter version):

- ``local_host.LocalHost``: the model in this process (the transformers
  engine); the device loop runs its work and steps its engine.
- ``engines.vllm_host.VllmHost``: vLLM's ``AsyncLLM`` here, its engine core
  and the trainer in a child process over the same 4-bit weights; an ordering
  barrier on the event loop, model work sent by ``collective_rpc``.

Model work is a function of the LoadedModel (``model_ops.py``) run where the
model lives. Hosts are chosen by a plain mapping from engine kind, and their
modules are imported only when chosen, so CPU installs never import vLLM.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, TypeVar

import torch

from service.errors import FailedPrecondition
from service.runtime.adapter_slots import AdapterSlots
from service.runtime.checkpoints import CheckpointStore
from service.runtime.engines.base import EngineRequest
from service.runtime.host_context import HostContext
from service.runtime.specs import AdapterCheckpoint, EngineKind, LoadSpec, SampleChunk
from service.runtime.validation import ModelBounds

T = TypeVar("T")


class ModelHost(Protocol):
    """One loaded model and its engine, wherever they run."""

    kind: EngineKind
    spec: LoadSpec
    tokenizer: object
    """The model's tokenizer in this process (prompts are tokenized on the event loop's side)."""
    bounds: ModelBounds
    eos_token_ids: tuple[int, ...]
    engine_slots: AdapterSlots
    """Saved adapters the engine holds for Generate."""

    @property
    def adapter_version(self) -> int:
        """The trained adapter's version now."""

    @property
    def dead(self) -> bool:
        """The engine has stopped for good (its process died): only LoadModel helps."""

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(loaded, *args)`` where the model lives, after every sample admitted before it; later samples wait."""

    async def inspect(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(loaded, *args)`` for a read that need not wait for running samples."""

    async def acquire_engine_adapter(self, name: str, store: CheckpointStore) -> AdapterCheckpoint:
        """Make saved adapter ``name`` available to the engine (``engine_slots.acquire``)."""

    def generate(self, requests: list[EngineRequest]) -> AsyncIterator[list[SampleChunk]]:
        """Run the samples; yield their chunks as they come. Closing the iterator early aborts what still runs."""

    def running_requests(self) -> int:
        """Samples running in the engine."""

    def queue_depth(self) -> int:
        """Work waiting to start."""

    def kv_cache_usage(self) -> float:
        """Fraction of the engine's KV cache in use (0 when not known)."""

    def device_memory(self) -> tuple[int, int, int]:
        """Accelerator memory where the model lives: (allocated, reserved, total) bytes; cheap (metrics read it)."""

    async def shutdown(self) -> None:
        """Release the model and the engine, after the work admitted before."""


_HOST_MODULES: dict[EngineKind, tuple[str, str]] = {
    EngineKind.TRANSFORMERS: ("service.runtime.local_host", "LocalHost"),
    EngineKind.VLLM: ("service.runtime.engines.vllm_host", "VllmHost"),
}


def vllm_available() -> bool:
    """A CUDA GPU is present and vLLM is installed."""
    return torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None


def choose_engine(fast_inference: bool | None) -> EngineKind:
    """fast_inference unset: vLLM when available; true: vLLM or FAILED_PRECONDITION; false: transformers."""
    if fast_inference is False:
        return EngineKind.TRANSFORMERS
    if vllm_available():
        return EngineKind.VLLM
    if fast_inference:
        raise FailedPrecondition(
            "fast_inference=true needs a CUDA GPU and vLLM (pip install .[gpu]), and this server has none: "
            "set fast_inference=false to sample with transformers"
        )
    return EngineKind.TRANSFORMERS


async def start_host(kind: EngineKind, ctx: HostContext) -> ModelHost:
    """Start the host of an engine kind (imports its module on first use)."""
    module, name = _HOST_MODULES[kind]
    return await getattr(importlib.import_module(module), name).start(ctx)
