"""Engine backends: how each engine kind gets the base weights and builds its engine.

A plain mapping from EngineKind to a builder; the vLLM builder is imported
only when chosen, so CPU installs never import vLLM.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from service.errors import FailedPrecondition
from service.runtime.engines.base import Engine
from service.runtime.specs import EngineKind, LoadSpec


@dataclass(frozen=True)
class BuildContext:
    """What a backend needs to build the trainer's model and the engine."""

    spec: LoadSpec
    model_dir: Path
    tokenizer: object
    dtype: torch.dtype
    device: torch.device
    report: Callable[..., None]
    """report(phase: LoadPhase, message: str, done=0, total=0, unit="")"""


@dataclass
class BuiltModel:
    """A backend's result: the PEFT model the trainer uses and the engine that samples."""

    model: torch.nn.Module
    engine: Engine
    eos_token_ids: tuple[int, ...]
    vocab_size: int
    base_weight_copies: int = 1
    kv_cache_bytes: Callable[[], int] = field(default=lambda: 0)
    kv_cache_usage: Callable[[], float] = field(default=lambda: 0.0)


Builder = Callable[[BuildContext], BuiltModel]

_BUILDER_MODULES: dict[EngineKind, str] = {
    EngineKind.TRANSFORMERS: "service.runtime.engines.transformers_backend",
    EngineKind.VLLM: "service.runtime.engines.vllm_backend",
}


def vllm_available() -> bool:
    """A CUDA GPU is present and vLLM is installed."""
    return torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None


def choose_engine(fast_inference: bool | None) -> EngineKind:
    """fast_inference unset: vLLM when available; true: vLLM or FAILED_PRECONDITION; false: transformers."""
    if fast_inference is False:
        return EngineKind.TRANSFORMERS
    if vllm_available():
        return EngineKind.VLLM
    if fast_inference:
        raise FailedPrecondition(
            "fast_inference=true needs a CUDA GPU and vLLM (pip install .[gpu]), and this server has none: "
            "set fast_inference=false to sample with transformers"
        )
    return EngineKind.TRANSFORMERS


def builder_for(kind: EngineKind) -> Builder:
    """The builder of an engine kind (imports its module on first use)."""
    return importlib.import_module(_BUILDER_MODULES[kind]).build


__all__ = ["BuildContext", "BuiltModel", "builder_for", "choose_engine", "vllm_available"]
