"""What engines and backends share: the request of one sample, the trainer's link to its engine, build types.

``Engine`` is what the device loop drives (the transformers engine), shaped
after vLLM's LLMEngine: requests are added, the loop calls ``step()`` until
nothing is unfinished, and each step returns the new output of every sample
that advanced; all its methods run on the device thread. ``TrainerLink`` is
the part of an engine the trainer uses, wherever the two live together (the
transformers engine itself; with vLLM, the engine-process side of
``engines/vllm_worker.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from service.runtime.specs import LoadSpec, SampleChunk, SamplingSpec


@dataclass(frozen=True)
class EngineRequest:
    """One sample to generate (a Generate call becomes prompts x n requests)."""

    request_id: str
    prompt_index: int
    sample_index: int
    prompt_ids: tuple[int, ...]
    sampling: SamplingSpec
    """Per-sample parameters: n is 1 and seed, when set, is already this sample's own."""
    adapter: str
    """"" = the trained adapter, "base" = none, else a saved adapter's name."""
    token_ids_only: bool = False
    """Leave text out: nothing is detokenized for this sample."""
    whole_sample: bool = False
    """Only the finished sample is wanted: an engine that can may skip its partial outputs."""


class TrainerLink(Protocol):
    """What the trainer needs from the engine that samples its adapter."""

    def sync_adapter(self, version: int) -> float:
        """Make the trained adapter's current weights the ones sampled; return seconds spent."""

    def pause_for_training(self) -> None:
        """Called (with no request running) before a TrainStep: e.g. release the KV cache (vLLM standby)."""

    def resume_after_training(self) -> None:
        """Called after the TrainStep, before sampling resumes: undo ``pause_for_training``."""


@dataclass(frozen=True)
class BuildContext:
    """What a backend needs to build the trainer's model and its engine."""

    spec: LoadSpec
    model_dir: Path
    tokenizer: object
    dtype: torch.dtype
    device: torch.device
    report: Callable[..., None]
    """report(phase: LoadPhase, message: str, done=0, total=0, unit="")"""


@dataclass
class BuiltModel:
    """A backend's result: the PEFT model the trainer uses and its link to the engine."""

    model: torch.nn.Module
    engine: TrainerLink
    eos_token_ids: tuple[int, ...]
    vocab_size: int
    base_weight_copies: int = 1
    kv_cache_bytes: Callable[[], int] = field(default=lambda: 0)
    kv_cache_usage: Callable[[], float] = field(default=lambda: 0.0)


class Engine(TrainerLink, Protocol):
    """A sampling engine driven by the device loop."""

    def add_request(self, request: EngineRequest) -> None:
        """Queue a sample; it starts at a coming ``step()``."""

    def step(self) -> list[tuple[str, SampleChunk]]:
        """Advance every running sample by one engine iteration; return (request_id, chunk) pairs."""

    def abort(self, request_ids: list[str]) -> None:
        """Stop these samples now; no further chunks are returned for them."""

    def has_unfinished_requests(self) -> bool:
        """True while any added request has not finished."""

    def running_requests(self) -> int:
        """Samples queued or running."""

    def add_adapter(self, name: str, adapter_dir: Path) -> None:
        """Make a saved adapter (a PEFT checkpoint directory) available to sample from as ``name``."""

    def remove_adapter(self, name: str) -> None:
        """Forget a saved adapter added by ``add_adapter``."""

    def shutdown(self) -> None:
        """Release the engine's resources."""
