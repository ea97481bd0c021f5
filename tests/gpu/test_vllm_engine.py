"""The vLLM engine on a GPU: one copy of the base, continuous batching, abort, in-memory adapter sync, standby.

Runs in-process on the runtime (Controller + device loop + vLLM), on the
1.1B-shaped random model in 4 bits with a rank-64 LoRA. Figures the test
record quotes are printed (run with ``-rP`` to see them).
"""

from __future__ import annotations

import asyncio
import time
import uuid

import bitsandbytes as bnb
import pytest
import torch

from service.runtime.controller import Controller
from service.runtime.engines import vllm_available

if not vllm_available():
    pytest.skip("needs a CUDA GPU and vLLM (pip install .[gpu])", allow_module_level=True)

from service.runtime.engines.vllm_backend import model_runner  # noqa: E402
from service.runtime.engines.vllm_engine import TRAINED_LORA_ID, VllmEngine  # noqa: E402
from service.runtime.memory import base_weight_tensors  # noqa: E402
from service.runtime.specs import (  # noqa: E402
    EngineKind,
    GenerateSpec,
    OptimizerSpec,
    PromptSpec,
    SampleChunk,
    SamplingSpec,
    StepOutcome,
    TrainSequenceSpec,
    TrainSpec,
)

pytestmark = pytest.mark.gpu

PROMPT = tuple(range(300, 364))
LOGPROB_TOLERANCE = 0.1
"""Largest |engine - trainer| logprob (nats) allowed for the same adapter: both run bf16 with the same NF4
weights, but different kernels (FlashAttention vs SDPA, punica vs PEFT LoRA in fp32, bnb GEMV vs dequantize)."""


def loaded(controller: Controller):
    """The runtime's loaded model (test access to its internals)."""
    return controller._model


def greedy(max_tokens: int) -> SamplingSpec:
    return SamplingSpec(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, logprobs=0)


async def generate(controller: Controller, prompts, sampling: SamplingSpec, adapter: str = "") -> list[SampleChunk]:
    spec = GenerateSpec(prompts=tuple(PromptSpec(token_ids=tuple(p)) for p in prompts), sampling=sampling, adapter=adapter)
    return [chunk async for chunk in controller.generate(spec)]


def tokens_of(chunks: list[SampleChunk], prompt_index: int = 0) -> list[int]:
    return [t for c in chunks if c.prompt_index == prompt_index for t in c.token_ids]


def logprobs_of(chunks: list[SampleChunk], prompt_index: int = 0) -> list[float]:
    return [lp.logprob for c in chunks if c.prompt_index == prompt_index for lp in c.logprobs]


async def on_device(controller: Controller, fn):
    """Run ``fn()`` on the device thread, between engine steps."""
    return await controller._device.call(fn)


def engine_sequence_logprobs(engine: VllmEngine, ids: list[int], lora) -> list[float]:
    """vLLM's own logprob of each token of ``ids`` after the first (prompt logprobs), under ``lora``."""
    from vllm import SamplingParams
    from vllm.inputs import tokens_input

    request_id = f"score-{uuid.uuid4().hex}"
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    engine.llm_engine.add_request(request_id, tokens_input(list(ids), cache_salt=request_id), params, lora_request=lora)
    while True:
        for output in engine.llm_engine.step():
            if output.request_id == request_id and output.finished:
                return [float(position[token].logprob) for token, position in zip(ids[1:], output.prompt_logprobs[1:])]


def trained_lora():
    from vllm.lora.request import LoRARequest

    return LoRARequest(lora_name="trained", lora_int_id=TRAINED_LORA_ID, lora_path="in-memory")


async def train_on(controller: Controller, ids: list[int], learning_rate: float, steps: int = 1):
    result = None
    for _ in range(steps):
        spec = TrainSpec(sequences=(TrainSequenceSpec(token_ids=tuple(ids)),), optimizer=OptimizerSpec(learning_rate=learning_rate))
        result = await controller.train_step(spec)
        assert result.outcome is StepOutcome.APPLIED
    return result


async def test_the_engine_is_vllm_and_the_trainer_shares_its_base_weights(controller: Controller) -> None:
    description = controller.describe()
    model = loaded(controller)
    assert description.engine is EngineKind.VLLM
    assert description.memory.base_weight_copies == 1
    vllm_model = model_runner(model.engine.llm_engine).get_model()
    vllm_storages = {p.untyped_storage().data_ptr() for p in vllm_model.parameters()}
    trainer_base = [p for p in model.model.parameters() if not p.requires_grad]
    assert trainer_base, "the trainer has no frozen base weights"
    not_shared = [tuple(p.shape) for p in trainer_base if p.untyped_storage().data_ptr() not in vllm_storages]
    assert not_shared == [], f"trainer weights not on vLLM's storage: {not_shared[:5]}"
    four_bit = [m for m in model.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four_bit) == 22 * 7
    memory = description.memory
    print(
        f"base_weights={memory.base_weights_bytes / 2**30:.3f} GiB adapter={memory.adapter_bytes / 2**30:.3f} GiB "
        f"kv_cache={memory.kv_cache_bytes / 2**30:.2f} GiB allocated={memory.device_allocated_bytes / 2**30:.2f} GiB"
    )
    assert 0.5 * 2**30 < memory.base_weights_bytes < 1.5 * 2**30
    assert memory.kv_cache_bytes > 2**30
    assert sum(t.numel() for t in base_weight_tensors(model.model)) > 0


async def test_a_generate_joins_a_running_one_and_finishes_first(controller: Controller) -> None:
    long_call = asyncio.create_task(generate(controller, [PROMPT] * 4, greedy(400)))
    await asyncio.sleep(0.5)
    assert not long_call.done()
    short = await generate(controller, [PROMPT[:16]], greedy(8))
    assert not long_call.done(), "the short call waited for the long batch: no continuous batching"
    assert len(tokens_of(short)) == 8
    long = await long_call
    assert all(len(tokens_of(long, p)) == 400 for p in range(4))


async def test_a_lone_sample_streams_every_token_and_a_large_batch_streams_in_chunks(controller: Controller) -> None:
    lone = await generate(controller, [PROMPT], greedy(16))
    assert [len(c.token_ids) for c in lone] == [1] * 16
    batch = await generate(controller, [PROMPT] * 64, greedy(64))
    assert all(len(tokens_of(batch, p)) == 64 for p in range(64))
    first_chunks = {}
    for chunk in batch:
        first_chunks.setdefault(chunk.prompt_index, chunk)
    assert all(len(c.token_ids) == 1 for c in first_chunks.values()), "the first token must not wait for a full chunk"
    assert len(batch) < 64 * 64 / 2, f"{len(batch)} chunks for 4096 tokens: a large batch should stream several tokens per chunk"


async def test_a_cancelled_generate_is_aborted_in_the_engine(controller: Controller) -> None:
    engine = loaded(controller).engine
    stream = controller.generate(GenerateSpec(prompts=(PromptSpec(token_ids=PROMPT),) * 8, sampling=greedy(900)))
    received = 0
    async for chunk in stream:
        received += len(chunk.token_ids)
        if received >= 40:
            break
    await stream.aclose()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and await on_device(controller, engine.llm_engine.get_num_unfinished_requests):
        await asyncio.sleep(0.05)
    assert await on_device(controller, engine.llm_engine.get_num_unfinished_requests) == 0
    assert engine.running_requests() == 0


async def test_after_a_sync_the_engine_matches_the_trainer_and_differs_from_the_old_adapter(controller: Controller) -> None:
    model = loaded(controller)
    engine = model.engine
    first = await generate(controller, [PROMPT], greedy(48))
    version_before = first[0].adapter_version
    continuation = tokens_of(first)
    ids = [*PROMPT, *continuation]
    tail = len(continuation)
    engine_before = await on_device(controller, lambda: engine_sequence_logprobs(engine, ids, trained_lora()))
    trainer_before = (await controller.compute_logprobs([ids], ""))[0][0][1:]
    assert max(abs(a - b) for a, b in zip(logprobs_of(first), engine_before[-tail:])) < LOGPROB_TOLERANCE

    result = await train_on(controller, ids, learning_rate=1e-2, steps=2)
    assert result.adapter_version == version_before + 2
    assert result.seconds.sync > 0
    engine_after = await on_device(controller, lambda: engine_sequence_logprobs(engine, ids, trained_lora()))
    trainer_after = (await controller.compute_logprobs([ids], ""))[0][0][1:]

    match_before = max(abs(a - b) for a, b in zip(engine_before, trainer_before))
    match_after = max(abs(a - b) for a, b in zip(engine_after, trainer_after))
    moved = sum(abs(a - b) for a, b in zip(engine_after, engine_before)) / len(engine_after)
    print(f"max |engine - trainer| before={match_before:.4f} after={match_after:.4f}; mean |after - before| engine={moved:.4f} nats")
    assert match_before < LOGPROB_TOLERANCE
    assert match_after < LOGPROB_TOLERANCE
    assert moved > max(5 * match_after, 0.05), "the engine's logprobs did not follow the new adapter"

    second = await generate(controller, [PROMPT], greedy(4))
    assert {c.adapter_version for c in second} == {result.adapter_version}
    assert engine.sync_seconds and engine.sync_seconds[-1] < 0.05


async def test_base_selector_samples_without_the_adapter(controller: Controller) -> None:
    ids = list(PROMPT)
    await train_on(controller, [*ids, *range(500, 540)], learning_rate=1e-2)
    base = await generate(controller, [PROMPT], greedy(16), adapter="base")
    trainer_base = await controller.compute_logprobs([[*PROMPT, *tokens_of(base)]], "base")
    assert {c.adapter_version for c in base} == {0}
    assert max(abs(a - b) for a, b in zip(logprobs_of(base), trainer_base[0][0][-16:])) < LOGPROB_TOLERANCE


async def test_standby_releases_the_kv_cache_during_a_train_step_and_keeps_the_weights(controller: Controller) -> None:
    model = loaded(controller)
    engine = model.engine
    before = tokens_of(await generate(controller, [PROMPT], greedy(32)))
    weights = [p.data_ptr() for p in model.model.parameters() if not p.requires_grad]
    result = await train_on(controller, [*PROMPT, *before], learning_rate=0.0)
    assert torch.isfinite(torch.tensor(result.loss))
    released = engine.standby.released_bytes
    kv_bytes = controller.describe().memory.kv_cache_bytes
    print(f"standby released {released / 2**30:.2f} GiB of a {kv_bytes / 2**30:.2f} GiB KV cache")
    assert released >= 0.9 * kv_bytes
    assert [p.data_ptr() for p in model.model.parameters() if not p.requires_grad] == weights
    after = tokens_of(await generate(controller, [PROMPT], greedy(32)))
    assert after == before, "with lr=0 the adapter is unchanged, so greedy output must be too"


async def test_a_saved_adapter_loaded_from_disk_samples_like_the_in_memory_one(controller: Controller, tmp_path) -> None:
    model = loaded(controller)
    engine = model.engine
    model.model.save_pretrained(tmp_path / "saved")
    await on_device(controller, lambda: engine.add_adapter("saved", tmp_path / "saved"))
    ids = [*PROMPT, *range(600, 632)]
    in_memory = await on_device(controller, lambda: engine_sequence_logprobs(engine, ids, trained_lora()))
    from_disk = await on_device(controller, lambda: engine_sequence_logprobs(engine, ids, engine._saved["saved"]))
    await on_device(controller, lambda: engine.remove_adapter("saved"))
    gap = max(abs(a - b) for a, b in zip(in_memory, from_disk))
    print(f"max |in-memory - from-disk| = {gap:.5f} nats")
    assert gap < 0.02
