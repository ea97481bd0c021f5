"""Builds the vLLM engine and the trainer's model over vLLM's weights (fast_inference on a GPU).

Order: vLLM's LLMEngine starts in this process and loads the base (NF4 through
bitsandbytes when load_in_4bit); the trainer's transformers model is made over
those same tensors (``shared_weights.py``); PEFT attaches LoRA; the trained
adapter is registered with vLLM from the PEFT tensors, pinned in a LoRA slot,
and from then on synced in memory (``lora_buffers.py``). The base is loaded
once. vLLM is imported only here, so CPU installs never need it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch

from service.runtime.engines import BuildContext, BuiltModel
from service.runtime.engines.lora_buffers import LoraBufferSync, trained_lora_pairs
from service.runtime.engines.shared_weights import build_shared_causal_lm
from service.runtime.memory import tensor_bytes
from service.runtime.model import attach_lora, eos_ids
from service.runtime.specs import LoadPhase, LoadSpec

GIL_SWITCH_SECONDS = 0.00025
"""Python's thread switch interval with the engine in process (default 0.005): the decode loop drops the GIL
while it waits for the GPU and must get it back from the gRPC event loop quickly to launch the next step
(tests/bench/gpu_runtime_profile.py compares it with 5 ms and 1 ms)."""
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The max_lora_rank values vLLM accepts; a LoadModel value between them is rounded up."""


@dataclass(frozen=True)
class VllmOptions:
    """Engine settings that are not LoadModel fields."""

    max_num_seqs: int = 256
    """Most sequences decoded in one engine step."""
    enforce_eager: bool = False
    """Skip torch.compile and CUDA graphs (faster start, slower decoding): for tests."""


OPTIONS = VllmOptions()
"""What ``build`` uses; tests may swap in eager mode."""


def engine_kwargs(ctx: BuildContext, options: VllmOptions) -> dict:
    """vLLM's engine arguments (``EngineArgs`` / ``LLM`` keywords) from LoadModel's fields."""
    spec = ctx.spec
    return dict(
        model=str(ctx.model_dir),
        tokenizer=str(ctx.model_dir),
        trust_remote_code=False,
        dtype=str(ctx.dtype).removeprefix("torch."),
        quantization="bitsandbytes" if spec.load_in_4bit else None,
        max_model_len=spec.max_seq_length,
        gpu_memory_utilization=spec.gpu_memory_utilization,
        kv_cache_dtype="fp8" if spec.float8_kv_cache else "auto",
        seed=spec.random_state % 2**32,
        disable_log_stats=spec.disable_log_stats,
        enable_lora=True,
        max_lora_rank=engine_lora_rank(spec.max_lora_rank),
        max_loras=spec.max_loras + 1,  # the trained adapter's pinned slot + max_loras saved ones
        enable_sleep_mode=spec.standby,
        max_num_seqs=options.max_num_seqs,
        enforce_eager=options.enforce_eager,
    )


def engine_lora_rank(max_lora_rank: int) -> int:
    """The smallest rank vLLM accepts that is at least ``max_lora_rank``."""
    return next(r for r in VLLM_LORA_RANKS if r >= max_lora_rank)


def model_runner(llm_engine):
    """The GPU model runner of an in-process LLMEngine."""
    worker = llm_engine.model_executor.driver_worker
    return getattr(worker, "worker", worker).model_runner


def build(ctx: BuildContext) -> BuiltModel:
    """Start vLLM, build the trainer over its weights, register and pin the trained adapter."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core must live in this process to share tensors
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.engine.llm_engine import LLMEngine

    from service.runtime.engines.vllm_engine import TRAINED_LORA_ID, KvStandby, VllmEngine

    spec = ctx.spec
    ctx.report(LoadPhase.ENGINE, "starting vLLM: loading the base" + (" as NF4 4-bit" if spec.load_in_4bit else "") + ", compiling, capturing CUDA graphs")
    llm_engine = LLMEngine.from_engine_args(EngineArgs(**engine_kwargs(ctx, OPTIONS)))
    runner = model_runner(llm_engine)
    ctx.report(LoadPhase.WEIGHTS, "building the trainer's layers over vLLM's weights (one copy of the base)")
    base = build_shared_causal_lm(ctx.model_dir, runner.get_model(), ctx.dtype, ctx.device)
    layers = base.config.num_hidden_layers
    ctx.report(LoadPhase.WEIGHTS, "trainer shares vLLM's base weights", layers, layers, "layers")
    ctx.report(LoadPhase.ADAPTER, f"attaching LoRA rank {spec.lora.rank}")
    model = attach_lora(base, spec)
    pairs = list(trained_lora_pairs(model))
    adapters = runner.lora_manager._adapter_manager
    adapters.add_adapter(_vllm_lora_model(TRAINED_LORA_ID, pairs, spec, ctx.dtype))
    llm_engine.pin_lora(TRAINED_LORA_ID)
    sync = LoraBufferSync(pairs, adapters.modules, slot=adapters.lora_index_to_id.index(TRAINED_LORA_ID))
    engine = VllmEngine(llm_engine, sync, KvStandby(runner) if spec.standby else None)
    scheduler = llm_engine.engine_core.engine_core.scheduler
    kv_bytes = tensor_bytes(t for t in runner.kv_caches if t is not None)
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    torch.cuda.empty_cache()  # give back what building the trainer used transiently
    return BuiltModel(
        model=model,
        engine=engine,
        eos_token_ids=eos_ids(ctx.tokenizer, base.config),
        vocab_size=base.config.vocab_size,
        base_weight_copies=1,
        kv_cache_bytes=lambda: kv_bytes,
        kv_cache_usage=lambda: float(scheduler.kv_cache_manager.usage),
    )


def _vllm_lora_model(lora_id: int, pairs, spec: LoadSpec, dtype: torch.dtype):
    """vLLM's LoRAModel made from the PEFT tensors (no file).

    It stays on the CPU: pinning copies it into its GPU slot once, and later
    syncs write that slot directly.
    """
    from vllm.lora.lora_model import LoRAModel
    from vllm.lora.peft_helper import PEFTHelper

    tensors = {}
    for pair in pairs:
        tensors[f"base_model.model.{pair.name}.lora_A.weight"] = pair.a.detach()
        tensors[f"base_model.model.{pair.name}.lora_B.weight"] = pair.b.detach()
    helper = PEFTHelper.from_dict({"r": spec.lora.rank, "lora_alpha": spec.lora.alpha, "target_modules": list(spec.lora.target_modules)})
    return LoRAModel.from_lora_tensors(lora_id, tensors, helper, device="cpu", dtype=dtype)
