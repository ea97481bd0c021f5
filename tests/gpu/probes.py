"""Reads of the trainer inside vLLM's engine process, for the GPU tests (sent with ``host.inspect``).

Each is a module-level function of the LoadedModel, so it travels by name to
the engine's process (the repository root is on its import path there).
"""

from __future__ import annotations

from service.runtime.memory import base_weight_tensors


def weight_sharing(loaded) -> dict:
    """How the trainer's frozen weights relate to vLLM's own parameters."""
    import bitsandbytes as bnb

    vllm_model = loaded.engine.model_runner.get_model()
    vllm_storages = {p.untyped_storage().data_ptr() for p in vllm_model.parameters()}
    frozen = [p for p in loaded.model.parameters() if not p.requires_grad]
    return {
        "frozen": len(frozen),
        "not_shared": [tuple(p.shape) for p in frozen if p.untyped_storage().data_ptr() not in vllm_storages],
        "linear4bit": sum(isinstance(m, bnb.nn.Linear4bit) for m in loaded.model.modules()),
        "base_tensors": sum(t.numel() for t in base_weight_tensors(loaded.model)),
    }


def frozen_pointers(loaded) -> list[int]:
    """Addresses of the trainer's frozen weights."""
    return [p.data_ptr() for p in loaded.model.parameters() if not p.requires_grad]


def standby_released_bytes(loaded) -> int:
    """What the last standby release gave back."""
    return loaded.engine.standby.released_bytes


def save_peft(loaded, directory: str) -> None:
    """Write the trained adapter with PEFT's save_pretrained."""
    loaded.model.save_pretrained(directory)


def train_profile(loaded, steps: int) -> dict:
    """Where a TrainStep's time goes in the engine's process: the full TrainStep path against a plain
    PEFT loop (forward, cross-entropy, backward, AdamW) on the same model and batch."""
    import time

    import torch

    from service.runtime import model_ops
    from service.runtime.specs import LossSpec, OptimizerSpec
    from service.runtime.validation import PreparedSequence
    from tests.bench.gpu_workload import train_batch

    batch = train_batch()
    sequences = [PreparedSequence(ids, [0.0] + [1.0] * (len(ids) - 1), [0.0] * len(ids), None) for ids in batch]
    info = {
        "attn_implementation": loaded.model.config._attn_implementation,
        "lora_dtype": str(loaded.trainable[0].dtype),
        "torch_threads": torch.get_num_threads(),
        "grad_enabled": torch.is_grad_enabled(),
        "inference_mode": torch.is_inference_mode_enabled(),
    }

    def timed(fn) -> list[float]:
        seconds = []
        for _ in range(steps):
            torch.cuda.synchronize()
            started = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            seconds.append(time.perf_counter() - started)
        return seconds

    def full() -> None:
        model_ops.train(loaded, sequences, LossSpec(), OptimizerSpec(learning_rate=0.0), False, time.perf_counter())

    ids = torch.tensor(batch, device=loaded.device)

    def plain() -> None:
        loaded.model.train()
        logits = loaded.model(input_ids=ids, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
        loaded.model.eval()
        for p in loaded.trainable:
            p.grad = None

    def forward_only() -> None:
        with torch.no_grad():
            loaded.model(input_ids=ids, use_cache=False)

    info["full_step_s"] = timed(full)
    info["plain_fwd_bwd_s"] = timed(plain)
    info["forward_only_s"] = timed(forward_only)

    # The same plain loop on the base loaded again by transformers (the PEFT baseline's model), in this process.
    from service.runtime.peft_model import attach_lora, load_hf_base

    own = attach_lora(load_hf_base(loaded.model_dir, loaded.spec, loaded.dtype, loaded.device), loaded.spec)
    own_trainable = [p for p in own.parameters() if p.requires_grad]

    def own_plain() -> None:
        own.train()
        logits = own(input_ids=ids, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
        for p in own_trainable:
            p.grad = None

    info["own_model_attn"] = own.config._attn_implementation
    info["own_model_plain_fwd_bwd_s"] = timed(own_plain)
    return info
