"""The controller: the servicer's one entry point into the runtime.

It validates requests on the event loop, hands model work to the device loop
and turns device-thread results into awaitables and async iterators. It holds
the loaded model but never computes with it on the event loop.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import NamedTuple

import torch

from service.config import ServerConfig
from service.errors import InvalidArgument, ModelNotLoaded, ResourceExhausted, Unavailable
from service.metrics import Metrics
from service.runtime.adapter_slots import AdapterSlots, SavedAdapters, peft_adapter_name
from service.runtime.adapter_state import capture, restore
from service.runtime.checkpoints import CheckpointStore
from service.runtime.chunks import coalesce, take_ready
from service.runtime.device_loop import DeviceLoop, Inbox
from service.runtime.engines import choose_engine
from service.runtime.engines.base import EngineRequest
from service.runtime.model import (
    LoadedModel,
    ProgressCallback,
    Stopwatch,
    check_load_spec,
    build_loaded_model,
    check_lora_targets,
    load_tokenizer,
    report,
)
from service.runtime.paths import resolve_model_dir
from service.runtime.specs import (
    BASE_ADAPTER,
    AdapterCheckpoint,
    GenerateSpec,
    LoadPhase,
    LoadProgress,
    LoadSpec,
    ModelDescription,
    RestoredAdapter,
    SampleChunk,
    TrainResult,
    TrainSpec,
)
from service.runtime.training import score_sequences, train_step
from service.runtime.validation import (
    check_adapter_selector,
    check_logprob_request_size,
    check_token_ids,
    prepare_prompts,
    prepare_train_sequences,
)

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 2.0


class Controller:
    """Owns the device loop and the loaded model; see the module docstring."""

    def __init__(self, config: ServerConfig, metrics: Metrics) -> None:
        self._config = config
        self._metrics = metrics
        self._device = DeviceLoop()
        self._model: LoadedModel | None = None
        self._saved: SavedAdapters | None = None
        """The loaded model's slots for saved adapters; set and cleared with ``_model``."""
        self._store = CheckpointStore(config.resolved_checkpoint_root)
        self._call_ids = itertools.count()
        self._queued_samples = 0
        self._model_listeners: list[Callable[[], Awaitable[None]]] = []
        metrics.bind_load_gauges(self._device.queue_depth, self._device.running_requests, self._kv_cache_usage)

    def start(self) -> None:
        """Finish or undo checkpoint writes a crash interrupted, then start the device thread."""
        try:
            self._store.recover()
        except OSError:
            log.exception("could not tidy the checkpoint root %s", self._store.root)
        self._device.start()

    def stop(self) -> None:
        """Finish queued work, release the model and end the device thread."""
        self._device.stop()
        if self._model is not None:
            self._model.engine.shutdown()
            self._model = None

    def on_model_change(self, listener: Callable[[], Awaitable[None]]) -> None:
        """Await ``listener()`` on the event loop after every load and unload (readiness follows it)."""
        self._model_listeners.append(listener)

    async def _notify_model_change(self) -> None:
        for listener in self._model_listeners:
            await listener()

    @property
    def loaded(self) -> bool:
        """A model is loaded."""
        return self._model is not None

    def _require_model(self) -> LoadedModel:
        if self._model is None:
            raise ModelNotLoaded()
        return self._model

    def _kv_cache_usage(self) -> float:
        model = self._model
        return 0.0 if model is None else model.kv_cache_usage()

    # --- LoadModel / UnloadModel / GetModel -------------------------------------------------

    async def load_model(self, spec: LoadSpec) -> AsyncIterator[LoadProgress | ModelDescription]:
        """Load a model, yielding progress (with heartbeats during long phases) and finally its description."""
        check_load_spec(spec)
        aio = asyncio.get_running_loop()
        events: asyncio.Queue[LoadProgress] = asyncio.Queue()
        clock = Stopwatch()
        future = self._device.call(lambda: self._load_on_device(spec, lambda e: aio.call_soon_threadsafe(events.put_nowait, e), clock))
        future.add_done_callback(lambda _: aio.create_task(self._notify_model_change()))
        last = LoadProgress(LoadPhase.RESOLVE, "waiting for the device loop")
        while not future.done():
            getter = asyncio.ensure_future(events.get())
            done, _ = await asyncio.wait({getter, future}, timeout=HEARTBEAT_SECONDS, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                last = getter.result()
                yield last
            else:
                getter.cancel()
                if not done:
                    yield replace(last, elapsed_seconds=clock.elapsed())
        while not events.empty():
            yield events.get_nowait()
        description = future.result()
        self._metrics.model_load_seconds.set(description.load_seconds)
        self._metrics.model_loaded.set(1)
        self._metrics.adapter_version.set(description.adapter_version)
        yield description

    def _load_on_device(self, spec: LoadSpec, progress: ProgressCallback, clock: Stopwatch) -> ModelDescription:
        # What can refuse the request (name, engine, tokenizer) runs before the loaded model is
        # released, so a bad LoadModel leaves the old model serving.
        report(progress, clock, LoadPhase.RESOLVE, f"resolving {spec.model_name}")
        model_dir = resolve_model_dir(spec.model_name, self._config.model_roots, self._config.cache_dir)
        kind = choose_engine(spec.fast_inference)
        report(progress, clock, LoadPhase.TOKENIZER, "loading the tokenizer")
        tokenizer = load_tokenizer(model_dir)
        check_lora_targets(model_dir, spec)
        self._unload_on_device()
        loaded = build_loaded_model(spec, model_dir, tokenizer, kind, progress, clock)
        self._device.set_engine(loaded.engine)
        self._saved = SavedAdapters.for_model(loaded.model, loaded.engine, spec.max_loras)
        self._model = loaded
        report(progress, clock, LoadPhase.READY, f"{spec.model_name} loaded with the {kind.value} engine")
        return loaded.describe()

    def _unload_on_device(self) -> bool:
        model, self._model = self._model, None
        self._saved = None
        if model is None:
            return False
        self._device.set_engine(None)
        model.engine.shutdown()
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return True

    async def unload_model(self) -> bool:
        """Release the model; False when none was loaded."""
        unloaded = await self._device.call(self._unload_on_device)
        self._metrics.model_loaded.set(0)
        await self._notify_model_change()
        return unloaded

    def describe(self) -> ModelDescription | None:
        """The loaded model's description (cached accounting plus live process numbers), or None."""
        model = self._model
        return None if model is None else model.describe()

    # --- Generate ---------------------------------------------------------------------------

    async def generate(self, spec: GenerateSpec) -> AsyncIterator[SampleChunk]:
        """Sample from the engine; yields chunks as the device loop produces them. Cancelling aborts the samples."""
        model = self._require_model()
        prompts = prepare_prompts(spec, model.tokenizer, model.bounds, self._config.limits)
        samples = len(prompts) * spec.sampling.n
        limit = self._config.limits.max_queued_generations
        if self._queued_samples + samples > limit:
            raise ResourceExhausted(
                f"{self._queued_samples} samples are queued or running and this request adds {samples}: over "
                f"max_queued_generations={limit}; retry later"
            )
        pinned = await self._pin_saved_adapter(model, spec.adapter)
        call_id = next(self._call_ids)
        requests = [
            EngineRequest(
                request_id=f"{call_id}-{p}-{s}",
                prompt_index=p,
                sample_index=s,
                prompt_ids=tuple(ids),
                sampling=replace(spec.sampling, n=1, seed=None if spec.sampling.seed is None else (spec.sampling.seed + s) % 2**63),
                adapter=spec.adapter,
            )
            for p, ids in enumerate(prompts)
            for s in range(spec.sampling.n)
        ]
        aio = asyncio.get_running_loop()
        chunks: asyncio.Queue[SampleChunk | BaseException] = asyncio.Queue()
        unfinished = {r.request_id for r in requests}
        id_of = {(r.prompt_index, r.sample_index): r.request_id for r in requests}
        started = time.perf_counter()
        first_token = True
        self._queued_samples += samples
        try:
            self._device.admit(requests, Inbox(aio, chunks), expected_engine=model.engine)
            while unfinished:
                ready, error = take_ready(chunks, await chunks.get())
                for chunk in coalesce(ready):
                    if first_token and chunk.token_ids:
                        self._metrics.time_to_first_token.observe(time.perf_counter() - started)
                        first_token = False
                    self._metrics.record_generated(len(chunk.token_ids))
                    if chunk.finish_reason is not None:
                        unfinished.discard(id_of[(chunk.prompt_index, chunk.sample_index)])
                    # A saved adapter's samples carry the version it had when it was saved.
                    yield chunk if pinned is None else replace(chunk, adapter_version=pinned.checkpoint.adapter_version)
                if error is not None:
                    raise error
        finally:
            self._queued_samples -= samples
            if pinned is not None:
                pinned.slots.unpin(spec.adapter)
            if unfinished:
                self._device.abort(sorted(unfinished))

    async def _pin_saved_adapter(self, model: LoadedModel, adapter: str) -> _PinnedAdapter | None:
        """For a saved adapter's name: pin it in the engine's slots and have the engine hold it.

        Loading it is a device call, so only a first use waits for running samples;
        None for the trained adapter ("") and the base. The caller unpins.
        """
        saved = self._saved
        if adapter in ("", BASE_ADAPTER) or saved is None:
            return None
        slots = saved.engine
        slots.pin(adapter)
        try:
            checkpoint = slots.held(adapter)
            if checkpoint is None:

                def acquire() -> AdapterCheckpoint:
                    self._require_same_model(model)
                    return slots.acquire(adapter, self._store)

                checkpoint = await self._device.call(acquire)
        except BaseException:
            slots.unpin(adapter)
            raise
        return _PinnedAdapter(slots, checkpoint)

    # --- TrainStep / ComputeLogprobs ---------------------------------------------------------

    async def train_step(self, spec: TrainSpec) -> TrainResult:
        """Run one TrainStep on the device loop, after any running samples finish."""
        model = self._require_model()
        sequences = prepare_train_sequences(spec, model.tokenizer, model.bounds, self._config.limits)
        queued_at = time.perf_counter()

        def run() -> TrainResult:
            self._require_same_model(model)
            model.engine.pause_for_training()
            try:
                return train_step(model, sequences, spec.loss, spec.optimizer, spec.accumulate, queued_at, self._sync_adapter)
            finally:
                model.engine.resume_after_training()

        result = await self._device.call(run)
        self._metrics.train_steps.labels(result.outcome.value).inc()
        self._metrics.record_trained(result.tokens)
        self._metrics.adapter_version.set(result.adapter_version)
        self._metrics.record_train_result(result)
        return result

    def _sync_adapter(self, model: LoadedModel) -> float:
        seconds = model.engine.sync_adapter(model.state.adapter_version)
        model.refresh_memory(only_if_optimizer_grew=True)
        self._metrics.lora_sync_seconds.observe(seconds)
        return seconds

    def _require_same_model(self, model: LoadedModel) -> None:
        if self._model is not model:
            raise Unavailable("the model was replaced or unloaded while this request waited: send it again")

    async def compute_logprobs(self, sequences: list[list[int]], adapter: str) -> tuple[list[list[float]], int]:
        """Per-token logprobs of given sequences (entry 0 is 0) and the adapter version used."""
        model = self._require_model()
        check_adapter_selector("adapter", adapter)
        saved = self._saved
        check_logprob_request_size(sequences, self._config.limits)
        for index, ids in enumerate(sequences):
            check_token_ids(f"sequences[{index}].ids", ids, model.bounds)
            if not 1 <= len(ids) <= model.bounds.max_seq_length:
                raise InvalidArgument(f"sequences[{index}].ids", f"needs 1 to max_seq_length={model.bounds.max_seq_length} tokens, got {len(ids)}")

        def run() -> tuple[list[list[float]], int]:
            self._require_same_model(model)
            if adapter == BASE_ADAPTER:
                return score_sequences(model, sequences, adapter), 0
            if adapter == "":
                return score_sequences(model, sequences, adapter), model.state.adapter_version
            checkpoint = saved.scorer.acquire(adapter, self._store)
            return score_sequences(model, sequences, peft_adapter_name("scorer", adapter)), checkpoint.adapter_version

        return await self._device.call(run)

    # --- Adapter checkpoints (SaveAdapter, LoadAdapter, ListAdapters, DeleteAdapter) -------------

    async def save_adapter(self, name: str, overwrite: bool) -> AdapterCheckpoint:
        """Write the trained adapter, optimizer state, step and version as checkpoint ``name``, atomically, between samples."""
        model = self._require_model()
        self._store.directory(name)  # a bad name fails before queueing

        def run() -> AdapterCheckpoint:
            self._require_same_model(model)
            if overwrite:
                self._saved.forget(name)  # engines reload it from the new files on next use
            return self._store.write(capture(model, name), overwrite)

        return await self._device.call(run)

    async def load_adapter(self, name: str) -> RestoredAdapter:
        """Restore checkpoint ``name`` into the trained adapter and optimizer; sampling and training continue from it."""
        model = self._require_model()
        self._store.directory(name)

        def run() -> RestoredAdapter:
            self._require_same_model(model)
            contents = self._store.read(name)
            restore(model, contents)
            self._sync_adapter(model)
            return RestoredAdapter(self._store.describe(name), model.state.adapter_version, model.state.step)

        restored = await self._device.call(run)
        self._metrics.adapter_version.set(restored.adapter_version)
        return restored

    async def list_adapters(self) -> list[AdapterCheckpoint]:
        """The saved checkpoints, by name (no model needed)."""
        return await asyncio.to_thread(self._store.list)

    async def delete_adapter(self, name: str) -> None:
        """Delete checkpoint ``name``, unloading it from the engine first; FAILED_PRECONDITION while it is sampled from."""
        self._store.directory(name)

        def run() -> None:
            if self._saved is not None:
                self._saved.forget(name)
            self._store.delete(name)

        await self._device.call(run)


class _PinnedAdapter(NamedTuple):
    """A saved adapter a Generate samples from: the slots it is pinned in and the checkpoint loaded."""

    slots: AdapterSlots
    checkpoint: AdapterCheckpoint
