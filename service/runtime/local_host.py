"""The model in the server process: the device loop runs its work and steps its engine (the transformers engine).

Generation requests go into the device loop, which batches them in the engine
and hands each engine step's chunks back to the event loop; model work runs
on the same thread as a barrier (``device_loop.py``). Nothing here computes on
the event loop.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import torch

from service.errors import Unavailable
from service.runtime import model_ops
from service.runtime.adapter_slots import AdapterSlots
from service.runtime.checkpoints import CheckpointStore
from service.runtime.chunks import coalesce, take_ready
from service.runtime.device_loop import DeviceLoop, Inbox
from service.runtime.engines import transformers_backend
from service.runtime.engines.base import BuildContext, EngineRequest
from service.runtime.host_context import HostContext
from service.runtime.memory import device_memory
from service.runtime.model import LoadedModel, assemble_loaded_model
from service.runtime.peft_model import pick_device, resolve_dtype
from service.runtime.specs import AdapterCheckpoint, EngineKind, SampleChunk

T = TypeVar("T")
REPLACED = "the model was replaced or unloaded while this request waited: send it again"


class LocalHost:
    """A LoadedModel in this process, driven by the server's device loop."""

    kind = EngineKind.TRANSFORMERS

    def __init__(self, device: DeviceLoop, loaded: LoadedModel) -> None:
        self._device = device
        self._loaded: LoadedModel | None = loaded
        self.spec = loaded.spec
        self.tokenizer = loaded.tokenizer
        self.bounds = loaded.bounds
        self.eos_token_ids = loaded.eos_token_ids
        self.engine_slots = AdapterSlots(loaded.spec.max_loras, loaded.engine.add_adapter, loaded.engine.remove_adapter)
        """Saved adapters in the engine (Generate); loaded on the device thread."""

    @classmethod
    async def start(cls, ctx: HostContext) -> LocalHost:
        """Load the base with transformers + bitsandbytes on the device thread and attach LoRA and the engine."""

        def build() -> LocalHost:
            device = pick_device()
            dtype = resolve_dtype(ctx.spec.dtype, device)
            built = transformers_backend.build(BuildContext(ctx.spec, ctx.model_dir, ctx.tokenizer, dtype, device, ctx.report))
            loaded = assemble_loaded_model(ctx.spec, ctx.model_dir, ctx.tokenizer, cls.kind, built, device, dtype)
            model_ops.sync_adapter(loaded)
            ctx.device_loop.set_engine(loaded.engine)
            return cls(ctx.device_loop, loaded)

        return await ctx.device_loop.call(build)

    @property
    def loaded(self) -> LoadedModel | None:
        """The model (None once shut down); for tests and tools in this process."""
        return self._loaded

    @property
    def adapter_version(self) -> int:
        """The trained adapter's version now."""
        loaded = self._loaded
        return 0 if loaded is None else loaded.state.adapter_version

    @property
    def dead(self) -> bool:
        """The in-process engine cannot die apart from the server."""
        return False

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(loaded, *args)`` on the device thread, after the samples running or queued before it."""
        return await self._device.call(lambda: fn(self._require_loaded(), *args))

    async def inspect(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(loaded, *args)`` for a read that need not wait for samples (in a worker thread, not the device's)."""
        return await asyncio.to_thread(lambda: fn(self._require_loaded(), *args))

    async def acquire_engine_adapter(self, name: str, store: CheckpointStore) -> AdapterCheckpoint:
        """Load saved adapter ``name`` into the engine (a device call: a first use waits for running samples)."""

        def acquire() -> AdapterCheckpoint:
            self._require_loaded()
            return self.engine_slots.acquire(name, store)

        return await self._device.call(acquire)

    async def generate(self, requests: list[EngineRequest]) -> AsyncIterator[list[SampleChunk]]:
        """Admit the samples to the device loop and yield what each engine step produced for them."""
        loaded = self._require_loaded()
        chunks: asyncio.Queue[SampleChunk | BaseException] = asyncio.Queue()
        unfinished = {r.request_id for r in requests}
        id_of = {(r.prompt_index, r.sample_index): r.request_id for r in requests}
        try:
            self._device.admit(requests, Inbox(asyncio.get_running_loop(), chunks), expected_engine=loaded.engine)
            while unfinished:
                ready, error = take_ready(chunks, await chunks.get())
                merged = coalesce(ready)
                for chunk in merged:
                    if chunk.finish_reason is not None:
                        unfinished.discard(id_of[(chunk.prompt_index, chunk.sample_index)])
                if merged:
                    yield merged
                if error is not None:
                    raise error
        finally:
            if unfinished:
                self._device.abort(sorted(unfinished))

    def running_requests(self) -> int:
        """Samples the engine holds."""
        return self._device.running_requests()

    def queue_depth(self) -> int:
        """Calls and generation batches waiting to start."""
        return self._device.queue_depth()

    def kv_cache_usage(self) -> float:
        """The transformers engine has no paged KV cache."""
        return 0.0

    def device_memory(self) -> tuple[int, int, int]:
        """This process's accelerator memory (the model lives here)."""
        return device_memory(self._loaded.device if self._loaded is not None else None)

    async def shutdown(self) -> None:
        """Release the model after the work queued before (the device loop stays for the next model)."""

        def release() -> None:
            loaded, self._loaded = self._loaded, None
            if loaded is None:
                return
            self._device.set_engine(None)
            loaded.engine.shutdown()
            del loaded
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

        await self._device.call(release)

    def _require_loaded(self) -> LoadedModel:
        loaded = self._loaded
        if loaded is None:
            raise Unavailable(REPLACED)
        return loaded
