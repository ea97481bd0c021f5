"""vLLM's engine arguments from LoadModel's fields, and the process settings vLLM needs.

The engine core runs in its own process with Tandem's worker extension
(``vllm_worker.py``) mixed into vLLM's GPU worker; ``vllm_host.py`` starts it.
Nothing here imports vLLM, so CPU installs can read it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from service.runtime.specs import LoadSpec

WORKER_EXTENSION = "service.runtime.engines.vllm_worker.TandemWorkerExtension"
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The max_lora_rank values vLLM accepts; a LoadModel value between them is rounded up."""
CUDA_GRAPH_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 160, 192, 224, 256)
"""Decode batch sizes captured as CUDA graphs (vLLM's default captures 35 up to 256, which is most of a
cold start's graph time; a batch between two sizes runs padded to the next)."""
PROCESS_ENVIRONMENT = {"VLLM_WORKER_MULTIPROC_METHOD": "spawn"}
"""Set once at process start (``configure_process``): any process vLLM starts from the server is a new
interpreter, never a ``fork`` of it, so it inherits none of the gRPC server's threads. Tandem's engine core
itself comes from a fork server (``engine_launch.py``), single-threaded, with its imports done."""


@dataclass(frozen=True)
class VllmOptions:
    """Engine settings that are not LoadModel fields."""

    max_num_seqs: int = 256
    """Most sequences decoded in one engine step."""
    enforce_eager: bool = False
    """Skip CUDA graphs as well (faster start, slower decoding): for tests."""
    torch_compile: bool = True
    """On (the default): vLLM's torch.compile of the model with its default CUDA graphs (full graphs for
    decode, piecewise for the rest). Off (``--engine-compile off``): the model runs vLLM's own fused CUDA
    ops eagerly and each decode batch replays one full graph (``FULL_DECODE_ONLY``). Measured on the H200
    with the 1.1B benchmark model (BENCHMARKS.md): off, LoadModel took 94 s cold and 39 s warm instead of
    144 s and 61 s, but 256 concurrent Generate calls ran at 0.79 of a compiled AsyncLLM beside them;
    compiled, Tandem had run at 0.93 of it (one pair of runs). A later compiled run loaded in 106 s and
    37 s and made 0.91 of the fastest baseline (in-process ``LLM.generate``). Throughput all day wins
    over a faster first start."""
    compile_training: bool = True
    """On (the default): the trainer's decoder layers run TrainStep's forward and backward through torch.compile
    (``compiled_training.py``); the first TrainStep after LoadModel compiles (72 s on the H200 with the 1.1B
    benchmark model; a forward + backward then took 158 ms against 249 ms eager). Off (``--train-compile off``): eager."""
    cuda_graph_batch_sizes: tuple[int, ...] = CUDA_GRAPH_BATCH_SIZES
    max_num_batched_tokens: int = 16384
    """Tokens one engine step may schedule (prefill chunk size). vLLM's default is 2048 for an engine started
    as AsyncLLM, 16384 for ``LLM`` on a large GPU: 256 prompts of 128 tokens then prefill in 2 steps, not 16."""


OPTIONS = VllmOptions()
"""What the vLLM host uses: set once by ``configure_process``; tests may swap in eager mode."""


def configure_process(torch_compile: bool = True, compile_training: bool = True) -> None:
    """Apply PROCESS_ENVIRONMENT (values already set in the environment win), ``--engine-compile`` and
    ``--train-compile``; call before any engine starts."""
    global OPTIONS
    for name, value in PROCESS_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    OPTIONS = replace(OPTIONS, torch_compile=torch_compile, compile_training=compile_training)


def engine_kwargs(spec: LoadSpec, model_dir: Path, options: VllmOptions) -> dict:
    """vLLM's engine arguments (``AsyncEngineArgs`` keywords) from LoadModel's fields.

    dtype AUTO is vLLM's "auto" (the trainer then computes in whatever vLLM chose), so the
    server process never touches CUDA.
    """
    sizes = [s for s in options.cuda_graph_batch_sizes if s <= options.max_num_seqs]
    return dict(
        model=str(model_dir),
        tokenizer=str(model_dir),
        trust_remote_code=False,
        dtype=spec.dtype.value,  # AUTO is vLLM's "auto" too
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
        max_num_batched_tokens=max(options.max_num_batched_tokens, spec.max_seq_length),
        enforce_eager=options.enforce_eager,
        compilation_config=compilation_config(sizes, options),
        worker_extension_cls=WORKER_EXTENSION,
    )


def compilation_config(capture_sizes: list[int], options: VllmOptions) -> dict:
    """vLLM's ``compilation_config`` for ``options``: the decode graph sizes, and without torch.compile
    full decode graphs. vLLM 0.24's model runner for Llama captures each size twice, without and with
    LoRA (28 graphs; ``cudagraph_specialize_lora`` changes that only with LoRA's ``specialize_active_lora``)."""
    config: dict = {"cudagraph_capture_sizes": capture_sizes}
    if not options.torch_compile:
        config.update(mode="NONE", cudagraph_mode="FULL_DECODE_ONLY")
    return config


def engine_lora_rank(max_lora_rank: int) -> int:
    """The smallest rank vLLM accepts that is at least ``max_lora_rank``."""
    return next(r for r in VLLM_LORA_RANKS if r >= max_lora_rank)
