"""Baselines of the GPU benchmark, in one process of their own (gpu_bench.py runs it):

1. vLLM alone: ``LLM(...)`` with the service's own engine settings; GPU memory after start.
2. The base loaded a second time: transformers + bitsandbytes 4-bit + PEFT beside that engine; GPU memory.
3. In-process ``LLM.generate`` with a rank-64 LoRA, PROMPTS x PROMPT_TOKENS in, NEW_TOKENS out.
4. transformers ``generate`` on that PEFT model (HF_PROMPTS x HF_NEW_TOKENS).
5. A plain PEFT + bitsandbytes training loop on the service's TrainStep batch.

    python tests/bench/gpu_baselines.py --cache-dir DIR --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from service.runtime.engines.base import BuildContext  # noqa: E402
from service.runtime.engines.vllm_backend import VllmOptions, engine_kwargs  # noqa: E402
from service.runtime.peft_model import attach_lora, load_hf_base  # noqa: E402
from service.tiny_model import ensure_builtin_model  # noqa: E402
from tests.bench.gpu_workload import (  # noqa: E402
    HF_NEW_TOKENS,
    HF_PROMPTS,
    LEARNING_RATE,
    MODEL,
    NEW_TOKENS,
    PROMPT_TOKENS,
    PROMPTS,
    TRAIN_STEPS,
    gpu_used_bytes,
    load_spec,
    prompt_ids,
    train_batch,
)

DEVICE = torch.device("cuda", 0)
DTYPE = torch.bfloat16


def timed_cuda(fn) -> float:
    """Seconds ``fn()`` took, GPU work included."""
    torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - started


def vllm_generate_tokens_per_second(llm, lora_request) -> tuple[float, list[float]]:
    """Best of two timed ``LLM.generate`` runs of the benchmark batch (after a small warm-up)."""
    from vllm import SamplingParams

    prompts = [{"prompt_token_ids": ids} for ids in prompt_ids(PROMPTS, PROMPT_TOKENS)]
    llm.generate(prompts[:16], SamplingParams(max_tokens=8, ignore_eos=True), lora_request=lora_request, use_tqdm=False)
    params = SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True, temperature=1.0)
    rates = []
    for _ in range(2):
        started = time.perf_counter()
        outputs = llm.generate(prompts, params, lora_request=lora_request, use_tqdm=False)
        seconds = time.perf_counter() - started
        rates.append(sum(len(o.outputs[0].token_ids) for o in outputs) / seconds)
    return max(rates), rates


def transformers_tokens_per_second(model) -> float:
    """transformers ``generate`` (sampling, no early stop) on the PEFT model."""
    ids = torch.tensor(prompt_ids(HF_PROMPTS, PROMPT_TOKENS), device=DEVICE)
    mask = torch.ones_like(ids)
    model.eval()
    with torch.no_grad():
        model.generate(input_ids=ids[:2], attention_mask=mask[:2], max_new_tokens=4, do_sample=True, pad_token_id=2)
        seconds = timed_cuda(
            lambda: model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=HF_NEW_TOKENS, min_new_tokens=HF_NEW_TOKENS, do_sample=True, pad_token_id=2
            )
        )
    return HF_PROMPTS * HF_NEW_TOKENS / seconds


def peft_train_tokens_per_second(model) -> float:
    """A plain loop: forward, cross-entropy, backward, clip to 1.0, AdamW; tokens with a target per second."""
    ids = torch.tensor(train_batch(), device=DEVICE)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LEARNING_RATE)
    model.train()

    def step() -> None:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    steps = TRAIN_STEPS - 1
    seconds = timed_cuda(lambda: [step() for _ in range(steps)])
    return steps * ids.shape[0] * (ids.shape[1] - 1) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM
    from vllm.lora.request import LoRARequest

    spec = load_spec()
    model_dir = ensure_builtin_model(MODEL, args.cache_dir)
    context = BuildContext(spec, model_dir, tokenizer=None, dtype=DTYPE, device=DEVICE, report=lambda *a, **k: None)
    started = time.perf_counter()
    llm = LLM(**engine_kwargs(context, VllmOptions()))
    torch.cuda.empty_cache()  # as the service does after LoadModel: count what is held, not what is cached
    result = {"vllm_load_seconds": time.perf_counter() - started, "vllm_alone_used_bytes": gpu_used_bytes()}
    print(f"vLLM alone: {result['vllm_alone_used_bytes'] / 2**30:.2f} GiB in use", flush=True)

    peft_model = attach_lora(load_hf_base(model_dir, spec, DTYPE, DEVICE), spec)
    torch.cuda.empty_cache()
    result["base_twice_used_bytes"] = gpu_used_bytes()
    with torch.no_grad():  # a non-zero adapter, so LoRA changes what vLLM samples
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=1e-3)
    with tempfile.TemporaryDirectory() as adapter_dir:
        peft_model.save_pretrained(adapter_dir)
        best, runs = vllm_generate_tokens_per_second(llm, LoRARequest("bench", 1, adapter_dir))
    result.update(vllm_generate_tokens_per_second=best, vllm_generate_runs=runs)
    print(f"vLLM LLM.generate: {best:,.0f} tok/s", flush=True)
    result["transformers_generate_tokens_per_second"] = transformers_tokens_per_second(peft_model)
    print(f"transformers generate: {result['transformers_generate_tokens_per_second']:,.0f} tok/s", flush=True)
    result["peft_train_tokens_per_second"] = peft_train_tokens_per_second(peft_model)
    print(f"PEFT train loop: {result['peft_train_tokens_per_second']:,.0f} tok/s", flush=True)
    args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
