"""The GPU benchmark's workload and settings, shared by the service run and the baselines (gpu_bench.py)."""

from __future__ import annotations

import random

from service.runtime.specs import LoadSpec, LoraSpec

MODEL = "tandem/tinyllama-1.1b-random"
VOCAB_SIZE = 32000
LORA_RANK = 64
LORA_ALPHA = 64.0
PROMPTS, PROMPT_TOKENS, NEW_TOKENS = 256, 128, 256
HF_PROMPTS, HF_NEW_TOKENS = 64, 128
"""transformers generate is ~15x slower: it runs a smaller batch and is compared in tokens/s."""
TRAIN_SEQUENCES, TRAIN_SEQUENCE_TOKENS, TRAIN_STEPS = 8, 512, 20
LEARNING_RATE = 1e-4
SEED = 1234


def load_spec() -> LoadSpec:
    """The LoadModel fields both the service and the vLLM-alone baseline use."""
    return LoadSpec(model_name=MODEL, fast_inference=True, gpu_memory_utilization=0.5, max_lora_rank=64, lora=LoraSpec(rank=LORA_RANK, alpha=LORA_ALPHA))


def prompt_ids(count: int, length: int) -> list[list[int]]:
    """Random prompts (token ids above the special tokens), the same in every run."""
    rng = random.Random(SEED)
    return [[rng.randrange(3, VOCAB_SIZE) for _ in range(length)] for _ in range(count)]


def train_batch() -> list[list[int]]:
    """The training batch: TRAIN_SEQUENCES sequences of TRAIN_SEQUENCE_TOKENS token ids."""
    return prompt_ids(TRAIN_SEQUENCES, TRAIN_SEQUENCE_TOKENS)


def gpu_used_bytes() -> int:
    """Device-wide GPU memory in use (NVML), counting every process, without making a CUDA context."""
    import pynvml

    pynvml.nvmlInit()
    try:
        return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used)
    finally:
        pynvml.nvmlShutdown()


def gpu_name() -> str:
    """The GPU's product name (NVML)."""
    import pynvml

    pynvml.nvmlInit()
    try:
        name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
        return name.decode() if isinstance(name, bytes) else name
    finally:
        pynvml.nvmlShutdown()
