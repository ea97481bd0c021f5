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


def reserved_bytes(loaded) -> int:
    """Device memory PyTorch's caching allocator holds in the engine's process (vLLM's pools included)."""
    import torch

    return torch.cuda.memory_reserved(loaded.device)


def save_peft(loaded, directory: str) -> None:
    """Write the trained adapter with PEFT's save_pretrained."""
    loaded.model.save_pretrained(directory)


def train_profile(loaded, steps: int) -> dict:
    """Where a TrainStep's time goes in the engine's process: the full TrainStep path against a plain
    PEFT loop (forward, cross-entropy, backward) on the same model and batch, and on the base loaded
    again by transformers in this process (the two interleaved, and once more with Python's garbage
    collector off); then one step of each plain loop under torch.profiler (device-busy time against
    wall time, the kernels and operators that take longest), how fast this process runs small work
    (``host_speed``), and what of its setup could slow eager training (threads, matmul flags,
    allocator settings)."""
    import gc
    import time

    import torch

    from service.runtime import model_ops
    from service.runtime.specs import LossSpec, OptimizerSpec
    from service.runtime.validation import PreparedSequence
    from tests.bench.gpu_workload import train_batch

    batch = train_batch()
    sequences = [PreparedSequence(ids, [0.0] + [1.0] * (len(ids) - 1), [0.0] * len(ids), None) for ids in batch]
    ids = torch.tensor(batch, device=loaded.device)
    own = own_model(loaded.model_dir, loaded.spec, loaded.dtype, loaded.device)
    info = {"process": process_setup(), "shared_quant_state": _first_quant_state(loaded.model), "own_quant_state": _first_quant_state(own)}
    info["attn_implementation"] = loaded.model.config._attn_implementation
    info["lora_dtype"] = str(loaded.trainable[0].dtype)

    def full() -> None:
        model_ops.train(loaded, sequences, LossSpec(), OptimizerSpec(learning_rate=0.0), False, time.perf_counter())

    info["full_step_s"] = timed_steps(full, steps)
    shared, own_runs = [], []
    for _ in range(steps):
        shared += timed_steps(lambda: plain_step(loaded.model, ids), 1)
        own_runs += timed_steps(lambda: plain_step(own, ids), 1)
    info["plain_fwd_bwd_s"], info["own_model_plain_fwd_bwd_s"] = shared, own_runs
    gc.disable()
    try:
        info["own_model_plain_fwd_bwd_gc_off_s"] = timed_steps(lambda: plain_step(own, ids), steps)
    finally:
        gc.enable()
    info["forward_only_s"] = timed_steps(lambda: forward_only(loaded.model, ids), steps)
    info["own_model_forward_only_s"] = timed_steps(lambda: forward_only(own, ids), steps)
    info["host_speed"] = host_speed(loaded.device)
    info["kernels_shared"] = _kernel_profile(lambda: plain_step(loaded.model, ids))
    info["kernels_own"] = _kernel_profile(lambda: plain_step(own, ids))
    info["kernels_full_step"] = _kernel_profile(full)
    return info


def own_model(model_dir, spec, dtype, device):
    """The base loaded by transformers (NF4 by bitsandbytes) with PEFT's LoRA on it: the benchmark's PEFT model."""
    from service.runtime.peft_model import attach_lora, load_hf_base

    return attach_lora(load_hf_base(model_dir, spec, dtype, device), spec)


def timed_steps(fn, steps: int) -> list[float]:
    """Seconds of each of ``steps`` calls of ``fn``, the device synchronized around each."""
    import time

    import torch

    seconds = []
    for _ in range(steps):
        torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    return seconds


def plain_step(model, ids) -> None:
    """A plain PEFT training step without the optimizer: forward, cross-entropy on the next token, backward."""
    import torch

    model.train()
    logits = model(input_ids=ids, use_cache=False).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    loss.backward()
    model.eval()
    for p in model.parameters():
        p.grad = None


def forward_only(model, ids) -> None:
    """One forward of ``model`` without autograd."""
    import torch

    with torch.no_grad():
        model(input_ids=ids, use_cache=False)


def host_speed(device) -> dict:
    """Microseconds per unit of small host work in this process, to compare two processes on one machine:
    a pure-Python loop step, a PyTorch operator on a small CPU tensor, and one on a small device tensor
    (launch included, synchronized at the end); the median of five rounds each."""
    import statistics
    import time

    import torch

    def per_unit(fn, units: int) -> float:
        rounds = []
        for _ in range(5):
            started = time.perf_counter()
            fn(units)
            rounds.append((time.perf_counter() - started) / units * 1e6)
        return round(statistics.median(rounds), 3)

    def python_loop(n: int) -> None:
        total = 0
        for i in range(n):
            total += i * i

    def torch_ops(tensor):
        def run(n: int) -> None:
            for _ in range(n):
                tensor.add_(1.0)
            if tensor.is_cuda:
                torch.cuda.synchronize()

        return run

    return {
        "python_loop_us": per_unit(python_loop, 200_000),
        "cpu_tensor_op_us": per_unit(torch_ops(torch.zeros(16)), 20_000),
        "device_tensor_op_us": per_unit(torch_ops(torch.zeros(16, device=device)), 20_000),
    }


def process_setup() -> dict:
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
        "torch_function_modes": torch._C._len_torch_function_stack(),
        "torch_dispatch_modes": torch._C._len_torch_dispatch_stack(),
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


def compiled_and_eager_training(loaded, batch: list[list[int]], timed: int) -> dict:
    """The trained adapter's loss and gradient on ``batch``, through the layers compiled for training and
    through their eager code (torch's ``force_eager`` stance), then ``timed`` forward + backward passes of each,
    interleaved (seconds). Nothing is applied: the gradients are returned as figures only."""
    import time

    import torch
    from service.runtime.training import sequence_logprobs

    ids = torch.tensor(batch, device=loaded.device)

    def loss_and_grad() -> tuple[float, torch.Tensor]:
        loaded.model.train()
        try:
            loss = -sequence_logprobs(loaded.model, ids).mean()
            grads = torch.autograd.grad(loss, loaded.trainable, allow_unused=True)
        finally:
            loaded.model.eval()
        flat = torch.cat([torch.zeros(p.numel(), device=p.device) if g is None else g.flatten().float() for p, g in zip(loaded.trainable, grads)])
        return float(loss.detach()), flat

    def eager():
        with torch.compiler.set_stance("force_eager"):
            return loss_and_grad()

    started = time.perf_counter()
    compiled_loss, compiled = loss_and_grad()
    first_seconds = time.perf_counter() - started
    eager_loss, reference = eager()
    seconds = {"compiled": [], "eager": []}
    for _ in range(timed):
        seconds["compiled"] += timed_steps(loss_and_grad, 1)
        seconds["eager"] += timed_steps(eager, 1)
    layers = [m for m in loaded.model.modules() if getattr(m, "_compiled_call_impl", None) is not None]
    return {
        "compiled_layers": len(layers),
        "first_compiled_seconds": first_seconds,
        "compiled_loss": compiled_loss,
        "eager_loss": eager_loss,
        "gradient_cosine": float(torch.nn.functional.cosine_similarity(compiled, reference, dim=0)),
        "gradient_relative_gap": float((compiled - reference).norm() / reference.norm()),
        "seconds": seconds,
    }


def heap_state(loaded) -> dict:
    """The engine process's garbage-collector state: objects frozen, and whether the trainer's model is among them."""
    import gc

    model = loaded.model
    return {"frozen": gc.get_freeze_count(), "trainer_frozen": not any(o is model for o in gc.get_objects())}
