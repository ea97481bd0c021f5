"""The GPU benchmark's workload and settings, shared by Tandem's side and the baselines (gpu_bench.py).

Model: the built-in 1.1B-shaped model in NF4 with a rank-64 LoRA on all seven
projections. Generate: PROMPTS prompts of PROMPT_TOKENS random token ids,
NEW_TOKENS new tokens each, no early stop, temperature 1. TrainStep:
TRAIN_SEQUENCES sequences of TRAIN_SEQUENCE_TOKENS token ids.
"""

from __future__ import annotations

import random

from tandem.v1 import tandem_pb2 as pb

from service import convert
from service.runtime.specs import LoadSpec

MODEL = "tandem/tinyllama-1.1b-random"
VOCAB_SIZE = 32000
LORA_RANK = 64
LORA_ALPHA = 64.0
GPU_MEMORY_UTILIZATION = 0.2
"""Tandem and the three vLLM baselines run side by side on one GPU (0.2 of an H200 is 28 GB each; the KV
cache this workload needs is about 2.2 GB)."""
PROMPTS, PROMPT_TOKENS, NEW_TOKENS = 256, 128, 256
TEMPERATURE = 1.0
TRAIN_SEQUENCES, TRAIN_SEQUENCE_TOKENS = 8, 512
LEARNING_RATE = 1e-4
SEED = 1234


def load_request() -> pb.LoadModelRequest:
    """The LoadModel request Tandem gets."""
    return pb.LoadModelRequest(
        model_name=MODEL,
        fast_inference=True,
        gpu_memory_utilization=GPU_MEMORY_UTILIZATION,
        max_lora_rank=LORA_RANK,
        lora=pb.LoraConfig(rank=LORA_RANK, alpha=LORA_ALPHA),
    )


def load_spec() -> LoadSpec:
    """The same request as the service reads it: the baselines build their engine arguments from it."""
    return convert.load_spec(load_request())


def prompt_ids(count: int, length: int) -> list[list[int]]:
    """Random prompts (token ids above the special tokens), the same in every run and process."""
    rng = random.Random(SEED)
    return [[rng.randrange(3, VOCAB_SIZE) for _ in range(length)] for _ in range(count)]


def train_batch() -> list[list[int]]:
    """The training batch: TRAIN_SEQUENCES sequences of TRAIN_SEQUENCE_TOKENS token ids."""
    return prompt_ids(TRAIN_SEQUENCES, TRAIN_SEQUENCE_TOKENS)


def train_tokens(batch: list[list[int]]) -> int:
    """Tokens with a target in ``batch`` (all but each sequence's first), as TrainStep counts them."""
    return sum(len(ids) - 1 for ids in batch)


def reply_spread(first_seconds: list[float], last_seconds: list[float]) -> dict[str, float]:
    """When the samples of one run got their first and last tokens (ms from the run's start): how long admitting
    every sample took (``first_max_ms``) and how far apart they finished (``last_min_ms`` to the run's end).
    A side that receives whole samples sees each sample once: its first and last are when the sample came."""
    first, last = sorted(first_seconds), sorted(last_seconds)
    return {
        "first_p50_ms": round(1000 * first[len(first) // 2], 1),
        "first_max_ms": round(1000 * first[-1], 1),
        "last_min_ms": round(1000 * last[0], 1),
        "last_p50_ms": round(1000 * last[len(last) // 2], 1),
    }
