"""The controller: the servicer's one entry point into the runtime.

It validates requests on the event loop and hands model work to the model
host (``host.py``): the local host runs it on the device loop in this process
(transformers engine), the vLLM host in vLLM's engine process. It holds the
host, enforces the server's role and load limits, counts metrics, and lets
listeners follow model loads and adapter versions. It never computes with the
model on the event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import replace
from typing import NamedTuple

from service.config import Role, ServerConfig
from service.errors import FailedPrecondition, InvalidArgument, ModelNotLoaded, ResourceExhausted, Unavailable
from service.metrics import Metrics
from service.runtime import heap, model_ops
from service.runtime.adapter_slots import AdapterSlots
from service.runtime.checkpoints import CheckpointContents, CheckpointStore
from service.runtime.chunks import WholeSamples
from service.runtime.device_loop import DeviceLoop
from service.runtime.engines.base import EngineRequest
from service.runtime.host import ModelHost, choose_engine, start_host
from service.runtime.host_context import HostContext
from service.runtime.memory import device_memory
from service.runtime.model import ProgressCallback, Stopwatch, check_load_spec, load_tokenizer, report
from service.runtime.paths import resolve_model_dir
from service.runtime.peft_model import check_lora_targets
from service.runtime.specs import (
    BASE_ADAPTER,
    AdapterCheckpoint,
    DetokenizeSpec,
    GenerateSpec,
    LoadPhase,
    LoadProgress,
    LoadSpec,
    ModelDescription,
    RestoredAdapter,
    SampleChunk,
    SamplingSpec,
    StepOutcome,
    TokenizedText,
    TokenizeSpec,
    TrainResult,
    TrainSpec,
)
from service.runtime.tokenization import detokenize, tokenize
from service.runtime.validation import (
    check_adapter_selector,
    check_logprob_request_size,
    check_token_ids,
    prepare_prompts,
    prepare_train_sequences,
)

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 2.0
DEADLINE_MARGIN_SECONDS = 0.05
"""A version wait ends this long before the call's deadline, so the caller hears why instead of DEADLINE_EXCEEDED."""


class Controller:
    """Owns the model host; see the module docstring."""

    def __init__(self, config: ServerConfig, metrics: Metrics) -> None:
        self._config = config
        self._metrics = metrics
        self._device = DeviceLoop()
        self._host: ModelHost | None = None
        self._load_seconds = 0.0
        self._load_lock: asyncio.Lock | None = None
        self._store = CheckpointStore(config.resolved_checkpoint_root)
        self._call_ids = itertools.count()
        self._queued_samples = 0
        self._model_listeners: list[Callable[[], Awaitable[None]]] = []
        self._version_listeners: list[Callable[[int], Awaitable[None]]] = []
        self._version_waiters: list[tuple[int, asyncio.Future]] = []
        metrics.bind_load_gauges(self._queue_depth, self._running_requests, self._kv_cache_usage, lambda: self._queued_samples)
        metrics.bind_device_memory(self._device_memory)

    def start(self) -> None:
        """Finish or undo checkpoint writes a crash interrupted, then start the device thread."""
        try:
            self._store.recover()
        except OSError:
            log.exception("could not tidy the checkpoint root %s", self._store.root)
        self._device.start()

    async def stop(self) -> None:
        """Release the model (after the work queued before) and end the device thread."""
        await self._retire_host()
        await asyncio.to_thread(self._device.stop)

    def on_model_change(self, listener: Callable[[], Awaitable[None]]) -> None:
        """Await ``listener()`` on the event loop after every load, unload and engine death (readiness follows it)."""
        self._model_listeners.append(listener)

    def on_adapter_change(self, listener: Callable[[int], Awaitable[None]]) -> None:
        """Await ``listener(version)`` after every change of the trained adapter (LoadModel, applied TrainStep, LoadAdapter)."""
        self._version_listeners.append(listener)

    @property
    def loaded(self) -> bool:
        """A model is loaded and its engine is alive."""
        return self._host is not None and not self._host.dead

    @property
    def host(self) -> ModelHost | None:
        """The model host (None when no model is loaded)."""
        return self._host

    @property
    def adapter_version(self) -> int:
        """The version of the adapter served now (0 when no model is loaded)."""
        return 0 if self._host is None else self._host.adapter_version

    def _require_host(self) -> ModelHost:
        host = self._host
        if host is None:
            raise ModelNotLoaded()
        if host.dead:
            raise Unavailable(f"the {host.kind.value} engine's process has stopped: call LoadModel to start it again")
        return host

    def _require_trainer(self, rpc: str) -> None:
        if self._config.role is Role.SAMPLER:
            where = f" at {self._config.trainer_address}" if self._config.trainer_address else ""
            raise FailedPrecondition(f"this server is a sampler: send {rpc} to the trainer{where}")

    def _queue_depth(self) -> int:
        return 0 if self._host is None else self._host.queue_depth()

    def _running_requests(self) -> int:
        return 0 if self._host is None else self._host.running_requests()

    def _kv_cache_usage(self) -> float:
        return 0.0 if self._host is None else self._host.kv_cache_usage()

    def _device_memory(self) -> tuple[int, int, int]:
        return device_memory() if self._host is None else self._host.device_memory()

    async def _notify_model_change(self) -> None:
        for listener in self._model_listeners:
            await listener()

    async def _note_version(self, version: int, *, trained: bool) -> None:
        """Record the served adapter version; wake Generate calls waiting for it; tell listeners of trained changes."""
        self._metrics.adapter_version.set(version)
        still_waiting = []
        for wanted, future in self._version_waiters:
            if wanted <= version:
                if not future.done():
                    future.set_result(None)
            else:
                still_waiting.append((wanted, future))
        self._version_waiters = still_waiting
        if trained:
            for listener in self._version_listeners:
                await listener(version)

    # --- LoadModel / UnloadModel / GetModel -------------------------------------------------

    async def load_model(self, spec: LoadSpec) -> AsyncIterator[LoadProgress | ModelDescription]:
        """Load a model, yielding progress (with heartbeats during long phases) and finally its description."""
        check_load_spec(spec)
        aio = asyncio.get_running_loop()
        events: asyncio.Queue[LoadProgress] = asyncio.Queue()
        clock = Stopwatch()
        task = asyncio.ensure_future(self._load(spec, lambda e: aio.call_soon_threadsafe(events.put_nowait, e), clock))
        last = LoadProgress(LoadPhase.RESOLVE, "waiting for the work queued before")
        try:
            while not task.done():
                getter = asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait({getter, task}, timeout=HEARTBEAT_SECONDS, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    last = getter.result()
                    yield last
                else:
                    getter.cancel()
                    if not done:
                        yield replace(last, elapsed_seconds=clock.elapsed())
            await asyncio.sleep(0)  # let progress posted from other threads arrive
            while not events.empty():
                yield events.get_nowait()
        finally:
            if not task.done():  # the caller went away: the load still finishes (it owns the device), unobserved
                task.add_done_callback(lambda t: t.exception())
        yield task.result()

    async def _load(self, spec: LoadSpec, progress: ProgressCallback, clock: Stopwatch) -> ModelDescription:
        if self._load_lock is None:
            self._load_lock = asyncio.Lock()
        async with self._load_lock:
            # What can refuse the request (name, engine, tokenizer, LoRA targets) runs before the loaded
            # model is released, so a bad LoadModel leaves the old model serving.
            report(progress, clock, LoadPhase.RESOLVE, f"resolving {spec.model_name}")
            model_dir = await asyncio.to_thread(resolve_model_dir, spec.model_name, self._config.model_roots, self._config.cache_dir)
            kind = choose_engine(spec.fast_inference)
            report(progress, clock, LoadPhase.TOKENIZER, "loading the tokenizer")
            tokenizer = await asyncio.to_thread(load_tokenizer, model_dir)
            await asyncio.to_thread(check_lora_targets, model_dir, spec)
            await self._retire_host()
            context = HostContext(spec, model_dir, tokenizer, self._device, lambda *a, **k: report(progress, clock, *a, **k), self._on_engine_death)
            try:
                host = await start_host(kind, context)
            except BaseException:
                await self._notify_model_change()  # the old model is gone: readiness drops
                raise
            self._host = host
            heap.freeze_loaded()
            self._load_seconds = clock.elapsed()
            report(progress, clock, LoadPhase.READY, f"{spec.model_name} loaded with the {kind.value} engine")
            self._metrics.model_load_seconds.set(self._load_seconds)
            self._metrics.model_loaded.set(1)
            await self._note_version(host.adapter_version, trained=True)  # a trainer publishes the new model's adapter
            await self._notify_model_change()
            return await self._describe(host)

    async def _retire_host(self) -> None:
        host, self._host = self._host, None
        if host is None:
            return
        self._metrics.model_loaded.set(0)
        heap.thaw()
        await host.shutdown()

    def _on_engine_death(self) -> None:
        """The host saw its engine's process die: readiness drops now; calls get UNAVAILABLE until LoadModel."""
        log.error("the engine's process died; call LoadModel to start it again")
        self._metrics.model_loaded.set(0)
        asyncio.get_running_loop().create_task(self._notify_model_change())

    async def unload_model(self) -> bool:
        """Release the model; False when none was loaded."""
        unloaded = self._host is not None
        await self._retire_host()
        await self._notify_model_change()
        return unloaded

    async def describe(self) -> ModelDescription | None:
        """The loaded model's description (read where the model lives, off the event loop), or None."""
        host = self._host
        if host is None or host.dead:
            return None
        return await self._describe(host)

    async def _describe(self, host: ModelHost) -> ModelDescription:
        return replace(await host.inspect(model_ops.describe), load_seconds=self._load_seconds)

    # --- Generate ---------------------------------------------------------------------------

    async def generate(self, spec: GenerateSpec) -> AsyncIterator[SampleChunk]:
        """Sample from the engine; yields chunks as they are produced. Cancelling aborts the samples."""
        host = self._require_host()
        prompts = prepare_prompts(spec, host.tokenizer, host.bounds, self._config.limits)
        if spec.token_ids_only and spec.sampling.stop:
            raise InvalidArgument("token_ids_only", "stop strings need text: leave sampling.stop empty (use stop_token_ids) or ask for text")
        samples = len(prompts) * spec.sampling.n
        limit = self._config.limits.max_queued_generations
        if self._queued_samples + samples > limit:
            raise ResourceExhausted(
                f"{self._queued_samples} samples are queued or running and this request adds {samples}: over "
                f"max_queued_generations={limit}; retry later"
            )
        self._queued_samples += samples  # counted before any await, so a burst cannot pass the check together
        pinned: _PinnedAdapter | None = None
        try:
            if spec.min_adapter_version is not None:
                await self._wait_for_version(host, spec.min_adapter_version, spec.time_remaining)
            pinned = await self._pin_saved_adapter(host, spec.adapter)
            requests = _engine_requests(next(self._call_ids), spec, prompts)
            started = time.perf_counter()
            first_token = not spec.whole_samples  # a whole sample's first token is not seen apart
            whole = WholeSamples() if spec.whole_samples else None
            async with aclosing(host.generate(requests)) as steps:
                async for chunks in steps:
                    for chunk in chunks:
                        if first_token and chunk.token_ids:
                            self._metrics.time_to_first_token.observe(time.perf_counter() - started)
                            first_token = False
                        self._metrics.record_generated(len(chunk.token_ids))
                        if whole is not None and (chunk := whole.add(chunk)) is None:
                            continue
                        # A saved adapter's samples carry the version it had when it was saved.
                        yield chunk if pinned is None else replace(chunk, adapter_version=pinned.checkpoint.adapter_version)
        finally:
            self._queued_samples -= samples
            if pinned is not None:
                pinned.slots.unpin(spec.adapter)

    async def _wait_for_version(self, host: ModelHost, wanted: int, time_remaining: float | None) -> None:
        """Return once the served adapter version is >= ``wanted``; FAILED_PRECONDITION when it cannot be in time."""
        if host.adapter_version >= wanted:
            return
        served = host.adapter_version
        if self._config.role is not Role.SAMPLER:
            raise FailedPrecondition(f"min_adapter_version={wanted} but this server's adapter is at version {served}: train first, or ask for {served}")
        budget = self._config.max_adapter_wait_seconds
        if time_remaining is not None:
            budget = min(budget, time_remaining - DEADLINE_MARGIN_SECONDS)
        future = asyncio.get_running_loop().create_future()
        self._version_waiters.append((wanted, future))
        try:
            await asyncio.wait_for(future, timeout=max(budget, 0.0))
        except TimeoutError:
            raise FailedPrecondition(
                f"this sampler serves adapter version {host.adapter_version}; min_adapter_version={wanted} was not published "
                f"and loaded within {max(budget, 0.0):.2f} s: retry with a longer deadline, or ask the trainer"
            ) from None
        finally:
            self._version_waiters = [(v, f) for v, f in self._version_waiters if f is not future]
        if self._host is not host:
            raise Unavailable("the model was replaced while this request waited for its adapter version: send it again")

    async def _pin_saved_adapter(self, host: ModelHost, adapter: str) -> _PinnedAdapter | None:
        """For a saved adapter's name: pin it in the engine's slots and have the engine hold it.

        None for the trained adapter ("") and the base. The caller unpins.
        """
        if adapter in ("", BASE_ADAPTER):
            return None
        slots = host.engine_slots
        slots.pin(adapter)
        try:
            checkpoint = slots.held(adapter) or await host.acquire_engine_adapter(adapter, self._store)
        except BaseException:
            slots.unpin(adapter)
            raise
        return _PinnedAdapter(slots, checkpoint)

    # --- TrainStep / ComputeLogprobs ---------------------------------------------------------

    async def train_step(self, spec: TrainSpec) -> TrainResult:
        """Run one TrainStep where the model lives, after any running samples finish."""
        self._require_trainer("TrainStep")
        host = self._require_host()
        sequences = prepare_train_sequences(spec, host.tokenizer, host.bounds, self._config.limits)
        result = await host.call(model_ops.train, sequences, spec.loss, spec.optimizer, spec.accumulate, time.perf_counter())
        self._metrics.train_steps.labels(result.outcome.value).inc()
        self._metrics.record_trained(result.tokens)
        self._metrics.record_train_result(result)
        if result.outcome is StepOutcome.APPLIED:
            self._metrics.lora_sync_seconds.observe(result.seconds.sync)
            await self._note_version(result.adapter_version, trained=True)
        return result

    async def compute_logprobs(self, sequences: list[list[int]], adapter: str) -> tuple[list[list[float]], int]:
        """Per-token logprobs of given sequences (entry 0 is 0) and the adapter version used."""
        host = self._require_host()
        check_adapter_selector("adapter", adapter)
        check_logprob_request_size(sequences, self._config.limits)
        for index, ids in enumerate(sequences):
            check_token_ids(f"sequences[{index}].ids", ids, host.bounds)
            if not 1 <= len(ids) <= host.bounds.max_seq_length:
                raise InvalidArgument(f"sequences[{index}].ids", f"needs 1 to max_seq_length={host.bounds.max_seq_length} tokens, got {len(ids)}")
        return await host.call(model_ops.score, sequences, adapter, self._store)

    # --- Adapter checkpoints (SaveAdapter, LoadAdapter, ListAdapters, DeleteAdapter) -------------

    async def save_adapter(self, name: str, overwrite: bool) -> AdapterCheckpoint:
        """Write the trained adapter, optimizer state, step and version as checkpoint ``name``, atomically, between samples."""
        self._require_trainer("SaveAdapter")
        host = self._require_host()
        self._store.directory(name)  # a bad name fails before queueing
        if overwrite:
            host.engine_slots.forget(name)  # the engine reads it again from the new files on next use
        return await host.call(model_ops.save_checkpoint, name, overwrite, self._store)

    async def load_adapter(self, name: str) -> RestoredAdapter:
        """Restore checkpoint ``name`` into the trained adapter and optimizer; sampling and training continue from it."""
        self._require_trainer("LoadAdapter")
        host = self._require_host()
        self._store.directory(name)
        restored, sync_seconds = await host.call(model_ops.load_checkpoint, name, self._store)
        self._metrics.lora_sync_seconds.observe(sync_seconds)
        await self._note_version(restored.adapter_version, trained=True)
        return restored

    async def list_adapters(self) -> list[AdapterCheckpoint]:
        """The saved checkpoints, by name (no model needed)."""
        return await asyncio.to_thread(self._store.list)

    async def delete_adapter(self, name: str) -> None:
        """Delete checkpoint ``name``, unloading it from the engine first; FAILED_PRECONDITION while it is sampled from."""
        self._store.directory(name)
        host = self._host
        if host is None or host.dead:
            await asyncio.to_thread(self._store.delete, name)
            return
        host.engine_slots.forget(name)
        await host.call(model_ops.delete_checkpoint, name, self._store)

    # --- Publishing and following (trainer and sampler roles) ----------------------------------

    async def snapshot_adapter(self) -> CheckpointContents:
        """The trained adapter's full state, taken in order after earlier work (what a trainer publishes)."""
        host = self._require_host()
        return await host.call(model_ops.snapshot, "published")

    async def install_adapter(self, contents: CheckpointContents) -> None:
        """Serve a published adapter: its weights and version replace the served ones between samples."""
        host = self._require_host()
        sync_seconds = await host.call(model_ops.install, contents)
        self._metrics.lora_sync_seconds.observe(sync_seconds)
        await self._note_version(host.adapter_version, trained=False)

    # --- Tokenize / Detokenize ----------------------------------------------------------------

    async def tokenize(self, spec: TokenizeSpec) -> list[TokenizedText]:
        """Token ids (and offsets) of texts or chats with the loaded model's tokenizer, in a worker thread (no device work)."""
        host = self._require_host()
        return await asyncio.to_thread(tokenize, spec, host.tokenizer, host.bounds, self._config.limits)

    async def detokenize(self, spec: DetokenizeSpec) -> list[str]:
        """Text of token id lists with the loaded model's tokenizer, in a worker thread (no device work)."""
        host = self._require_host()
        return await asyncio.to_thread(detokenize, spec, host.tokenizer, host.bounds, self._config.limits)


def _engine_requests(call_id: int, spec: GenerateSpec, prompts: list[list[int]]) -> list[EngineRequest]:
    """One EngineRequest per prompt and sample index, prompt by prompt."""
    per_sample = _per_sample(spec.sampling)
    return [
        EngineRequest(
            request_id=f"{call_id}-{p}-{s}",
            prompt_index=p,
            sample_index=s,
            prompt_ids=tuple(ids),
            sampling=sampling,
            adapter=spec.adapter,
            token_ids_only=spec.token_ids_only,
            whole_sample=spec.whole_samples,
        )
        for p, ids in enumerate(prompts)
        for s, sampling in enumerate(per_sample)
    ]


def _per_sample(sampling: SamplingSpec) -> list[SamplingSpec]:
    """One SamplingSpec per sample index, shared by the prompts: n is 1, and sample s seeds with (seed + s) mod 2**63."""
    seed = sampling.seed
    if sampling.n == 1 and (seed is None or 0 <= seed < 2**63):
        return [sampling]  # already sample 0's own: no copy
    return [replace(sampling, n=1, seed=None if seed is None else (seed + s) % 2**63) for s in range(sampling.n)]


class _PinnedAdapter(NamedTuple):
    """A saved adapter a Generate samples from: the slots it is pinned in and the checkpoint loaded."""

    slots: AdapterSlots
    checkpoint: AdapterCheckpoint

