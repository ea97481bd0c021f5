"""The vLLM host: vLLM's AsyncLLM in the server process, its engine core and the trainer in a child process.

This is how vLLM runs for its own server: ``AsyncLLM`` admits requests,
streams their outputs, detokenizes and aborts on cancel in this process; the
engine core steps the GPU in its own process, so the gRPC event loop and the
decode loop no longer share a GIL. The trainer lives in the engine's process
(``vllm_worker.py``, mixed into vLLM's GPU worker through
``worker_extension_cls``), over the engine's own 4-bit weights: one copy of
the base, and the adapter reaches vLLM's LoRA buffers in memory. Model work
crosses as ``collective_rpc`` calls (``worker_calls.py``).

Ordering: Generate calls hold an ``OrderedBarrier`` shared while their samples
run, model work holds it exclusively, first come first served; so every sample
comes from one adapter version and a Generate after a TrainStep samples the
new adapter. The trained adapter's prefix-cache entries are salted with its
version and with a count of exclusive calls (standby drops the KV cache's
contents), so KV blocks computed before are never reused after.

A dead engine process is seen within a quarter second: calls in flight end
UNAVAILABLE, the host reports itself dead, and only LoadModel helps.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from vllm import SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.inputs import tokens_input
from vllm.lora.request import LoRARequest
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError

from service.errors import EngineFailed, InvalidArgument, NotFound, TandemError, Unavailable
from service.runtime import model_ops
from service.runtime.adapter_slots import AdapterSlots
from service.runtime.barrier import OrderedBarrier
from service.runtime.checkpoints import CheckpointStore
from service.runtime.engines.base import EngineRequest
from service.runtime.engines import engine_launch, vllm_backend
from service.runtime.engines.worker_calls import TRAINED_LORA_ID, decode_reply, encode_build, encode_call
from service.runtime.host_context import HostContext
from service.runtime.specs import (
    BASE_ADAPTER,
    AdapterCheckpoint,
    EngineKind,
    FinishReason,
    LoadPhase,
    SampleChunk,
    SamplingSpec,
    TokenLogprob,
    TopLogprob,
)
from service.runtime.validation import ModelBounds

log = logging.getLogger(__name__)
T = TypeVar("T")

CHUNKS_PER_STEP = 2
"""Under load, about this many chunks per engine step per cohort of samples (see ``stream_interval``)."""
MAX_STREAM_INTERVAL = 128
"""Most tokens a streamed chunk waits for."""
DEATH_POLL_SECONDS = 0.25
MEMORY_POLL_SECONDS = 5.0
ENGINE_DIED = "the vLLM engine's process has stopped: call LoadModel to start it again"
_FINISH = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH, "abort": FinishReason.ABORT}


@dataclass(frozen=True)
class _Selected:
    """What a sample runs with: vLLM's LoRA request, the version to report, the prefix-cache salt."""

    lora: LoRARequest | None
    version: int
    salt: str


class VllmHost:
    """AsyncLLM in front, trainer in the engine's process; see the module docstring."""

    kind = EngineKind.VLLM

    def __init__(self, llm: AsyncLLM, ctx: HostContext, bounds: ModelBounds, eos_token_ids: tuple[int, ...], adapter_version: int) -> None:
        self._llm = llm
        self.spec = ctx.spec
        self.tokenizer = ctx.tokenizer
        self.bounds = bounds
        self.eos_token_ids = eos_token_ids
        self._adapter_version = adapter_version
        self._barrier = OrderedBarrier()
        self._epoch = 0
        """Exclusive calls so far: part of every prefix-cache salt."""
        self._running = 0
        self._streaming = 0
        """Running samples that stream (not whole samples): what sizes a streamed sample's chunks."""
        self._dead = False
        self._memory: tuple[int, int, int] = (0, 0, 0)
        self._trained = LoRARequest(lora_name="trained", lora_int_id=TRAINED_LORA_ID, lora_path="in-memory")
        self._saved: dict[str, LoRARequest] = {}
        self._lora_ids = itertools.count(TRAINED_LORA_ID + 1)
        self.engine_slots = AdapterSlots(ctx.spec.max_loras, self._register_saved, self._unregister_saved)
        """Saved adapters in the engine: registered here, read from disk by vLLM's worker on first use."""
        self._watchdog = asyncio.get_running_loop().create_task(self._watch(ctx.on_dead))

    @classmethod
    async def start(cls, ctx: HostContext) -> VllmHost:
        """Start the engine process (load, compile, CUDA graphs), then build the trainer there over its weights."""
        ctx.report(
            LoadPhase.ENGINE,
            "starting vLLM's engine process: loading the base" + (" as NF4 4-bit" if ctx.spec.load_in_4bit else "") + ", compiling, capturing CUDA graphs",
        )
        args = AsyncEngineArgs(**vllm_backend.engine_kwargs(ctx.spec, ctx.model_dir, vllm_backend.OPTIONS))
        engine_launch.use_fork_server()
        llm = await asyncio.to_thread(AsyncLLM.from_engine_args, args)
        try:
            ctx.report(LoadPhase.WEIGHTS, "building the trainer in the engine's process over its weights (one copy of the base)")
            [reply] = await llm.collective_rpc("tandem_build", args=(encode_build(ctx.spec, str(ctx.model_dir), vllm_backend.OPTIONS.compile_training),))
            built, version = decode_reply(reply)
        except BaseException:
            await asyncio.to_thread(llm.shutdown)
            raise
        ctx.report(LoadPhase.ADAPTER, f"LoRA rank {ctx.spec.lora.rank} attached and pinned in the engine", built.layers, built.layers, "layers")
        bounds = ModelBounds(built.vocab_size, ctx.spec.max_seq_length, built.eos_token_ids[0])
        return cls(llm, ctx, bounds, built.eos_token_ids, version)

    @property
    def adapter_version(self) -> int:
        """The trained adapter's version now."""
        return self._adapter_version

    @property
    def dead(self) -> bool:
        """The engine's process has died."""
        return self._dead

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(loaded, *args)`` in the engine's process, once the samples admitted before have finished."""
        async with self._barrier.exclusive():
            self._epoch += 1
            return await self._rpc(fn, args)

    async def inspect(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(loaded, *args)`` in the engine's process between two engine steps, without waiting for samples."""
        return await self._rpc(fn, args)

    async def _rpc(self, fn: Callable[..., T], args: tuple) -> T:
        self._require_alive()
        try:
            [reply] = await self._llm.collective_rpc("tandem_call", args=(encode_call(fn, args),))
        except EngineDeadError:
            raise Unavailable(ENGINE_DIED) from None
        result, self._adapter_version = decode_reply(reply)
        return result

    async def acquire_engine_adapter(self, name: str, store: CheckpointStore) -> AdapterCheckpoint:
        """Register saved adapter ``name`` (vLLM's worker reads it from its directory on first use)."""
        return self.engine_slots.acquire(name, store)

    async def generate(self, requests: list[EngineRequest]) -> AsyncIterator[list[SampleChunk]]:
        """Run the samples through AsyncLLM and yield what arrived, as it arrives."""
        async with self._barrier.shared():
            self._require_alive()
            if len(requests) == 1:  # one sample (most calls under load): no task and queue in between
                async with aclosing(self._sample(requests[0])) as chunks:
                    async for chunk in chunks:
                        yield [chunk]
                return
            arrived: asyncio.Queue[SampleChunk | BaseException] = asyncio.Queue()
            tasks = [asyncio.create_task(self._forward(request, arrived)) for request in requests]
            unfinished = len(requests)
            try:
                while unfinished:
                    batch = [await arrived.get()]
                    while not arrived.empty():
                        batch.append(arrived.get_nowait())
                    chunks = []
                    for item in batch:
                        if isinstance(item, BaseException):
                            raise item
                        chunks.append(item)
                        unfinished -= item.finish_reason is not None
                    yield chunks
            finally:
                for task in tasks:
                    task.cancel()  # AsyncLLM aborts a request whose generate() is cancelled
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _forward(self, request: EngineRequest, arrived: asyncio.Queue) -> None:
        """One sample's chunks into ``arrived``, then the error that ended it, if one did."""
        try:
            async for chunk in self._sample(request):
                arrived.put_nowait(chunk)
        except TandemError as error:
            arrived.put_nowait(error)

    async def _sample(self, request: EngineRequest) -> AsyncIterator[SampleChunk]:
        """One sample: AsyncLLM's outputs as SampleChunks; what fails it is raised as a TandemError. Closing
        the iterator (or cancelling its task) closes AsyncLLM's generate(), which aborts the request."""
        streamed = not request.whole_sample
        self._running += 1
        self._streaming += streamed
        try:
            selected = self._select(request.adapter)
            prompt = tokens_input(list(request.prompt_ids), cache_salt=selected.salt)  # as rendered: no preprocessing
            if streamed:  # a whole sample sends no chunks: vLLM makes no partial outputs for it
                self._llm.output_processor.stream_interval = stream_interval(self._streaming)
            params = sampling_params(request.sampling, request.token_ids_only, request.whole_sample)
            completion_tokens = 0
            async with aclosing(self._llm.generate(prompt, params, request.request_id, lora_request=selected.lora)) as outputs:
                async for output in outputs:
                    completion = output.outputs[0]
                    completion_tokens += len(completion.token_ids)
                    finish = _FINISH.get(completion.finish_reason, FinishReason.ABORT) if output.finished else None
                    yield _chunk(request, completion, finish, completion_tokens, selected.version)
        except TandemError:
            raise
        except EngineDeadError:
            raise Unavailable(ENGINE_DIED) from None
        except ValueError as error:  # vLLM's request validation
            raise InvalidArgument("prompts", str(error)) from None
        except Exception as error:
            log.exception("vLLM failed request %s", request.request_id)
            raise EngineFailed(f"the vLLM engine failed this request: {type(error).__name__}: {error}") from error
        finally:
            self._running -= 1
            self._streaming -= streamed

    def _select(self, selector: str) -> _Selected:
        if selector == BASE_ADAPTER:
            return _Selected(None, 0, f"base-e{self._epoch}")
        if selector == "":
            return _Selected(self._trained, self._adapter_version, f"trained-v{self._adapter_version}-e{self._epoch}")
        saved = self._saved.get(selector)
        if saved is None:
            raise NotFound(f"adapter {selector!r} is not loaded in the engine")
        return _Selected(saved, self._adapter_version, f"{saved.lora_name}-e{self._epoch}")

    def _register_saved(self, name: str, adapter_dir: Path) -> None:
        lora_id = next(self._lora_ids)
        # The name is unique per registration: vLLM keys prefix-cache blocks by LoRA name.
        self._saved[name] = LoRARequest(lora_name=f"{name}#{lora_id}", lora_int_id=lora_id, lora_path=str(adapter_dir))

    def _unregister_saved(self, name: str) -> None:
        request = self._saved.pop(name, None)
        if request is not None and not self._dead:
            asyncio.get_running_loop().create_task(self._llm.remove_lora(request.lora_int_id))

    def running_requests(self) -> int:
        """Samples AsyncLLM is running for this host."""
        return self._running

    def queue_depth(self) -> int:
        """Generate calls and model work waiting at the barrier."""
        return self._barrier.waiting

    def kv_cache_usage(self) -> float:
        """Not reported: vLLM's scheduler statistics are off (``disable_log_stats``)."""
        return 0.0

    def device_memory(self) -> tuple[int, int, int]:
        """The engine process's accelerator memory, as last read (every MEMORY_POLL_SECONDS)."""
        return self._memory

    async def shutdown(self) -> None:
        """Stop the engine's process after the samples admitted before finish (at once when it is dead)."""
        self._watchdog.cancel()
        if self._dead:
            await asyncio.to_thread(self._llm.shutdown)
            return
        async with self._barrier.exclusive():
            self._dead = True
            await asyncio.to_thread(self._llm.shutdown)

    def _require_alive(self) -> None:
        if self._dead:
            raise Unavailable(ENGINE_DIED)

    async def _watch(self, on_dead: Callable[[], None]) -> None:
        """Notice the engine's death within DEATH_POLL_SECONDS; read its memory every MEMORY_POLL_SECONDS meanwhile."""
        polls_per_read = round(MEMORY_POLL_SECONDS / DEATH_POLL_SECONDS)
        for poll in itertools.count():
            if self._llm.errored:
                break
            if poll % polls_per_read == 0:
                try:
                    self._memory = await self._rpc(model_ops.accelerator_memory, ())
                except TandemError:
                    log.warning("could not read the engine process's memory", exc_info=True)
            await asyncio.sleep(DEATH_POLL_SECONDS)
        if not self._dead:
            self._dead = True
            on_dead()


def stream_interval(running: int) -> int:
    """Tokens per streamed chunk for a sample admitted while ``running`` streamed samples run (itself included).

    Every chunk costs Python work (a vLLM RequestOutput, a SampleChunk, a gRPC
    message) on the event loop. A sample admitted to a light load streams every
    token; in a large batch each sample sends its first token at once, then one
    chunk per ``running / CHUNKS_PER_STEP`` tokens (at most MAX_STREAM_INTERVAL),
    so a step yields about CHUNKS_PER_STEP chunks per admitted cohort whatever
    the batch size. vLLM fixes a request's interval when it is added.
    """
    return max(1, min(MAX_STREAM_INTERVAL, -(-running // CHUNKS_PER_STEP)))


def sampling_params(spec: SamplingSpec, token_ids_only: bool = False, whole_sample: bool = False) -> SamplingParams:
    """vLLM's SamplingParams for one sample: streaming deltas, or only the finished sample for ``whole_sample``
    (vLLM then makes no partial outputs); no detokenization for ``token_ids_only``. Made for this one sample, so
    vLLM may take it without the deep copy it makes of a shared one (``skip_clone``, as vLLM's own server does)."""
    return SamplingParams(
        n=1,
        temperature=spec.temperature,
        top_p=spec.top_p,
        top_k=spec.top_k,
        min_p=spec.min_p,
        max_tokens=spec.max_tokens,
        stop=list(spec.stop),
        stop_token_ids=list(spec.stop_token_ids),
        seed=spec.seed,
        logprobs=spec.logprobs,
        ignore_eos=spec.ignore_eos,
        detokenize=not token_ids_only,
        output_kind=RequestOutputKind.FINAL_ONLY if whole_sample else RequestOutputKind.DELTA,
        skip_clone=True,
    )


def _chunk(request: EngineRequest, completion, finish: FinishReason | None, completion_tokens: int, version: int) -> SampleChunk:
    return SampleChunk(
        prompt_index=request.prompt_index,
        sample_index=request.sample_index,
        token_ids=tuple(completion.token_ids),
        text=completion.text,
        logprobs=_logprobs(completion, request.sampling.logprobs),
        finish_reason=finish,
        prompt_tokens=len(request.prompt_ids),
        completion_tokens=completion_tokens,
        adapter_version=version,
    )


def _logprobs(completion, top: int | None) -> tuple[TokenLogprob, ...]:
    """vLLM's per-position {token: Logprob} maps as TokenLogprobs: the sampled token's, with the ``top`` best."""
    if top is None or completion.logprobs is None:
        return ()
    result = []
    for token_id, position in zip(completion.token_ids, completion.logprobs):
        entries = dict(position.items())
        ranked = sorted(((lp.rank or 0, t, lp.logprob) for t, lp in entries.items() if lp.rank is not None and lp.rank <= top), key=lambda e: e[0])
        result.append(
            TokenLogprob(
                token_id=token_id,
                logprob=float(entries[token_id].logprob),
                top=tuple(TopLogprob(t, float(lp)) for _, t, lp in ranked),
            )
        )
    return tuple(result)
