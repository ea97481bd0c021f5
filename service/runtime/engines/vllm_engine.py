"""The vLLM engine: vLLM's LLMEngine in this process, driven by the device loop.

``add_request`` hands a sample to vLLM's scheduler, ``step`` runs one engine
iteration (continuous batching across every Generate call in flight) and turns
vLLM's delta outputs into SampleChunks (several tokens each under load, see
``stream_interval``), ``abort`` cancels in the scheduler.
The trained adapter sits pinned in one LoRA slot and ``sync_adapter`` copies
new weights into it (see ``lora_buffers.py``); its prefix-cache entries are
salted with the adapter version, so KV blocks computed under an older adapter
are never reused. Saved adapters are registered from their checkpoint
directories and take the other slots. With standby, the KV cache's memory is
unmapped while a TrainStep runs and mapped back after it (the weights, which
the trainer shares, stay mapped).
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch
from vllm import SamplingParams
from vllm.inputs import tokens_input
from vllm.lora.request import LoRARequest
from vllm.sampling_params import RequestOutputKind

from service.errors import NotFound
from service.runtime.engines.base import EngineRequest
from service.runtime.engines.lora_buffers import LoraBufferSync
from service.runtime.specs import BASE_ADAPTER, FinishReason, SampleChunk, SamplingSpec, TokenLogprob, TopLogprob

TRAINED_LORA_ID = 1
"""vLLM's id of the trained adapter; saved adapters get ids above it."""
CHUNKS_PER_STEP = 2
"""Under load, about this many chunks per engine step per cohort of samples (see ``stream_interval``)."""
MAX_STREAM_INTERVAL = 128
"""Most tokens a streamed chunk waits for."""
_FINISH = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH, "abort": FinishReason.ABORT}


@dataclass
class _Live:
    """A request vLLM is running."""

    request: EngineRequest
    adapter_version: int
    completion_tokens: int = 0


class KvStandby:
    """Unmaps and remaps the KV cache's memory (vLLM's cumem pool, tag ``kv_cache``); the weights stay put.

    vLLM's own ``sleep(level=1)`` would also move the weights to the CPU, which
    would pull them from under the trainer that shares them.
    """

    def __init__(self, model_runner) -> None:
        from vllm.device_allocator.cumem import CuMemAllocator

        self._allocator = CuMemAllocator.get_instance()
        self._model_runner = model_runner
        self.released_bytes = 0
        """Device memory freed by the last ``release`` (driver-reported)."""

    def release(self) -> None:
        """Unmap every KV-cache allocation (their contents are lost)."""
        from vllm.device_allocator.cumem import unmap_and_release

        torch.cuda.synchronize()
        free_before = torch.cuda.mem_get_info()[0]
        for data in self._allocator.pointer_to_data.values():
            if data.tag == "kv_cache":
                unmap_and_release(data.handle)
        self.released_bytes = torch.cuda.mem_get_info()[0] - free_before

    def restore(self) -> None:
        """Map the KV cache again at the same addresses (the CUDA graphs that use it stay valid)."""
        self._allocator.wake_up(tags=["kv_cache"])
        self._model_runner.post_kv_cache_wake_up()


class VllmEngine:
    """Engine over an in-process vLLM LLMEngine; see the module docstring."""

    def __init__(self, llm_engine, lora_sync: LoraBufferSync, standby: KvStandby | None) -> None:
        self._llm = llm_engine
        self._lora_sync = lora_sync
        self._standby = standby
        self._live: dict[str, _Live] = {}
        self._saved: dict[str, LoRARequest] = {}
        self._lora_ids = itertools.count(TRAINED_LORA_ID + 1)
        self._trained = LoRARequest(lora_name="trained", lora_int_id=TRAINED_LORA_ID, lora_path="in-memory")
        self._adapter_version = 0
        self.sync_seconds: deque[float] = deque(maxlen=1024)
        """The last syncs' durations."""

    @property
    def llm_engine(self):
        """The underlying vLLM LLMEngine (device thread only)."""
        return self._llm

    @property
    def standby(self) -> KvStandby | None:
        """The KV-cache standby control, when LoadModel asked for standby."""
        return self._standby

    def add_request(self, request: EngineRequest) -> None:
        lora, version, salt = self._adapter_of(request.adapter)
        prompt = tokens_input(list(request.prompt_ids), cache_salt=salt)
        self._llm.output_processor.stream_interval = stream_interval(len(self._live) + 1)
        self._llm.add_request(request.request_id, prompt, sampling_params(request.sampling), lora_request=lora)
        self._live[request.request_id] = _Live(request, version)

    def step(self) -> list[tuple[str, SampleChunk]]:
        chunks = []
        for output in self._llm.step():
            live = self._live.get(output.request_id)
            if live is None:
                continue
            completion = output.outputs[0]
            live.completion_tokens += len(completion.token_ids)
            finish = _FINISH.get(completion.finish_reason, FinishReason.ABORT) if output.finished else None
            if output.finished:
                del self._live[output.request_id]
            chunks.append((output.request_id, _chunk(live, completion, finish)))
        return chunks

    def abort(self, request_ids: list[str]) -> None:
        known = [r for r in request_ids if self._live.pop(r, None) is not None]
        if known:
            self._llm.abort_request(known)

    def has_unfinished_requests(self) -> bool:
        return bool(self._live) or self._llm.has_unfinished_requests()

    def running_requests(self) -> int:
        return len(self._live)

    def sync_adapter(self, version: int) -> float:
        """Copy the trained adapter into its engine slot; later requests are salted with ``version``."""
        seconds = self._lora_sync.copy()
        self._adapter_version = version
        self.sync_seconds.append(seconds)
        return seconds

    def pause_for_training(self) -> None:
        """With standby, release the KV cache (no request is running: the device loop drained them)."""
        if self._standby is None:
            return
        if not self._llm.reset_prefix_cache():
            raise RuntimeError("vLLM refused to reset its prefix cache: a request is still running")
        self._standby.release()

    def resume_after_training(self) -> None:
        """With standby, map the KV cache back."""
        if self._standby is not None:
            self._standby.restore()

    def add_adapter(self, name: str, adapter_dir: Path) -> None:
        """Register a saved PEFT checkpoint with vLLM (read from disk once, kept in vLLM's adapter cache)."""
        lora_id = next(self._lora_ids)
        # The name is unique per registration: vLLM keys prefix-cache blocks by LoRA name.
        request = LoRARequest(lora_name=f"{name}#{lora_id}", lora_int_id=lora_id, lora_path=str(adapter_dir))
        self._llm.add_lora(request)
        self._saved[name] = request

    def remove_adapter(self, name: str) -> None:
        request = self._saved.pop(name, None)
        if request is not None:
            self._llm.remove_lora(request.lora_int_id)

    def shutdown(self) -> None:
        """Stop vLLM's engine core and release its distributed state, so a later LoadModel can start another."""
        if self._llm is None:
            return
        llm, self._llm = self._llm, None
        self._live.clear()
        try:
            llm.engine_core.shutdown()
        finally:
            from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

            destroy_model_parallel()
            destroy_distributed_environment()

    def _adapter_of(self, selector: str) -> tuple[LoRARequest | None, int, str | None]:
        """(LoRA request, adapter version, prefix-cache salt) for an adapter selector."""
        if selector == BASE_ADAPTER:
            return None, 0, None
        if selector == "":
            return self._trained, self._adapter_version, f"trained-v{self._adapter_version}"
        saved = self._saved.get(selector)
        if saved is None:
            raise NotFound(f"adapter {selector!r} is not loaded in the engine")
        return saved, self._adapter_version, None


def stream_interval(running: int) -> int:
    """Tokens per streamed chunk for a sample admitted while ``running`` samples run (itself included).

    Every chunk costs Python work (a vLLM RequestOutput, a SampleChunk, a hop
    to the event loop, a gRPC message) on the threads that share the GIL with
    the decode loop. A sample admitted to a light load streams every token; in
    a large batch each sample sends its first token at once, then one chunk per
    ``running / CHUNKS_PER_STEP`` tokens (at most MAX_STREAM_INTERVAL), so a
    step yields about CHUNKS_PER_STEP chunks per admitted cohort whatever the
    batch size. The interval is fixed for the sample's life: vLLM counts
    unsent tokens from the last chunk.
    """
    return max(1, min(MAX_STREAM_INTERVAL, -(-running // CHUNKS_PER_STEP)))


def sampling_params(spec: SamplingSpec) -> SamplingParams:
    """vLLM's SamplingParams for one sample, streaming deltas."""
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
        output_kind=RequestOutputKind.DELTA,
    )


def _chunk(live: _Live, completion, finish: FinishReason | None) -> SampleChunk:
    request = live.request
    return SampleChunk(
        prompt_index=request.prompt_index,
        sample_index=request.sample_index,
        token_ids=tuple(completion.token_ids),
        text=completion.text,
        logprobs=_logprobs(completion, request.sampling.logprobs),
        finish_reason=finish,
        prompt_tokens=len(request.prompt_ids),
        completion_tokens=live.completion_tokens,
        adapter_version=live.adapter_version,
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

