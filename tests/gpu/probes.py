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
    PEFT loop (forward, cross-entropy, backward) on the same model and batch, and on the base loaded
    again by transformers in this process; then one step of each plain loop under torch.profiler
    (device-busy time against wall time, the kernels and operators that take longest) and what of the
    process's setup could slow eager training (threads, matmul flags, allocator settings)."""
    import time

    import torch

    from service.runtime import model_ops
    from service.runtime.peft_model import attach_lora, load_hf_base
    from service.runtime.specs import LossSpec, OptimizerSpec
    from service.runtime.validation import PreparedSequence
    from tests.bench.gpu_workload import train_batch

    batch = train_batch()
    sequences = [PreparedSequence(ids, [0.0] + [1.0] * (len(ids) - 1), [0.0] * len(ids), None) for ids in batch]
    ids = torch.tensor(batch, device=loaded.device)
    own = attach_lora(load_hf_base(loaded.model_dir, loaded.spec, loaded.dtype, loaded.device), loaded.spec)
    info = {"process": _process_setup(), "shared_quant_state": _first_quant_state(loaded.model), "own_quant_state": _first_quant_state(own)}
    info["attn_implementation"] = loaded.model.config._attn_implementation
    info["lora_dtype"] = str(loaded.trainable[0].dtype)

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

    def plain(model) -> None:
        model.train()
        logits = model(input_ids=ids, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
        model.eval()
        for p in model.parameters():
            p.grad = None

    def forward_only(model) -> None:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)

    info["full_step_s"] = timed(full)
    info["plain_fwd_bwd_s"] = timed(lambda: plain(loaded.model))
    info["own_model_plain_fwd_bwd_s"] = timed(lambda: plain(own))
    info["forward_only_s"] = timed(lambda: forward_only(loaded.model))
    info["own_model_forward_only_s"] = timed(lambda: forward_only(own))
    info["kernels_shared"] = _kernel_profile(lambda: plain(loaded.model))
    info["kernels_own"] = _kernel_profile(lambda: plain(own))
    info["kernels_full_step"] = _kernel_profile(full)
    return info


def _process_setup() -> dict:
    """What in this process's setup bears on eager PyTorch speed."""
    import gc
    import os
    import sys
    import threading

    import torch

    return {
        "threads": sorted(t.name for t in threading.enumerate()),
        "switch_interval_s": sys.getswitchinterval(),
        "torch_threads": torch.get_num_threads(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "gc_enabled": gc.isenabled(),
        "gc_threshold": gc.get_threshold(),
        "gc_frozen": gc.get_freeze_count(),
        "grad_enabled": torch.is_grad_enabled(),
        "inference_mode": torch.is_inference_mode_enabled(),
        "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "bf16_reduced_precision_reduction": torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "current_stream_is_default": torch.cuda.current_stream() == torch.cuda.default_stream(),
        "profiler_or_trace_hooks": [sys.gettrace() is not None, sys.getprofile() is not None],
        "env": {k: v for k, v in os.environ.items() if k.startswith(("PYTORCH_", "CUDA_", "OMP_", "TORCH_", "NCCL_", "CUBLAS")) and "/" not in v},
    }


def _first_quant_state(model) -> dict | None:
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            state = module.weight.quant_state
            return {"nested": state.nested, "dtype": str(state.dtype), "absmax_dtype": str(state.absmax.dtype), "blocksize": state.blocksize, "compute_dtype": str(module.compute_dtype)}
    return None


def _kernel_profile(step, rows: int = 12) -> dict:
    """One warm ``step`` under torch.profiler: wall and device-busy milliseconds, the top kernels and CPU operators."""
    import time

    import torch
    from torch.profiler import ProfilerActivity, profile

    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        started = time.perf_counter()
        step()
        torch.cuda.synchronize()
        wall = time.perf_counter() - started
    events = prof.key_averages()
    device = [e for e in events if e.self_device_time_total > 0 and e.device_type == torch.autograd.DeviceType.CUDA]
    cpu_ops = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]

    def row(e, attr: str) -> list:
        return [e.key[:90], e.count, round(getattr(e, attr) / 1000, 2)]

    return {
        "wall_ms": round(wall * 1000, 1),
        "device_busy_ms": round(sum(e.self_device_time_total for e in device) / 1000, 1),
        "kernel_launches": sum(e.count for e in device),
        "top_kernels_ms": [row(e, "self_device_time_total") for e in sorted(device, key=lambda e: -e.self_device_time_total)[:rows]],
        "top_cpu_ops_ms": [row(e, "self_cpu_time_total") for e in sorted(cpu_ops, key=lambda e: -e.self_cpu_time_total)[:rows]],
    }
