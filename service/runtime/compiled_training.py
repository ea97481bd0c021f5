"""TrainStep's forward and backward through torch.compile: fewer kernel launches for a host-bound step.

On the H200 an eager TrainStep of the 1.1B benchmark model is bound by host
time, not the GPU (7,237 kernels, the GPU busy 149 of 304 ms: BENCHMARKS.md),
as a plain PEFT loop is. Compiling each decoder layer fuses the elementwise
work around the 4-bit matmuls (dtype casts of the fp32 LoRA, norms, rotary,
SiLU) and runs the backward as one compiled graph per layer call. Measured
there (BENCHMARKS.md, fourth H200 run): a forward + backward of the 8 x 512
benchmark batch took 158 ms compiled against 249 ms eager in the engine's
process; the first TrainStep compiled for 72 s.

What a user sees:

- One graph serves every decoder layer and every batch shape: the layers are
  compiled with dynamic shapes, and the embeddings' output is marked as
  needing a gradient so that the first layer's input looks like every other
  layer's. The first TrainStep after LoadModel compiles (58-72 s on the H200).
  Inductor writes what it made to its cache, which vLLM points under
  ``VLLM_CACHE_ROOT`` when it compiles the engine; how much that shortens a
  later start's first TrainStep was not measured.
- Changing the PEFT model's structure (a saved adapter loaded for
  ComputeLogprobs adds LoRA modules) makes the next TrainStep compile again
  once; ``RECOMPILE_LIMIT`` bounds how often before torch falls back to eager.
- Only training runs compiled: the scoring forwards (ComputeLogprobs,
  ``training.score_sequences``) run under torch's ``force_eager`` stance, since
  their inference-mode graphs would be one more compile.

It is used by the vLLM engine's trainer only, whose model never generates: the
transformers engine also generates with its model, through a KV cache whose
per-layer state would make every layer a graph of its own.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers.modeling_layers import GradientCheckpointingLayer

RECOMPILE_LIMIT = 64
"""Graphs torch keeps per compiled function before running it eagerly (its default, 8, would be reached after
a few adapter loads)."""


def compile_decoder_layers(model: torch.nn.Module, backend: str | Callable = "inductor") -> int:
    """Compile every decoder layer of ``model`` (a PEFT model) for training; returns how many were compiled.

    ``backend`` is torch.compile's; the CPU tests use ``aot_eager`` (the same graphs, no code generation).
    """
    base = model.get_base_model()
    layers = [m for m in base.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        return 0
    base.get_input_embeddings().register_forward_hook(_output_requires_grad)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    for layer in layers:
        layer.compile(backend=backend, dynamic=True)
    return len(layers)


def _output_requires_grad(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
    """The embeddings are frozen: their output is a leaf, and marking it lets the first layer share the others' graph."""
    if torch.is_grad_enabled():
        output.requires_grad_(True)
