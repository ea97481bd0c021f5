"""The Engine protocol: what the device loop needs from a sampling engine.

Shaped after vLLM's LLMEngine so the vLLM engine is a thin adapter: requests
are added, the loop calls ``step()`` until nothing is unfinished, and each
step returns the new output of every sample that advanced. All methods run on
the device thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from service.runtime.specs import SampleChunk, SamplingSpec


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


class Engine(Protocol):
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

    def sync_adapter(self, version: int) -> float:
        """Make the trained adapter's current weights the ones sampled; return seconds spent."""

    def pause_for_training(self) -> None:
        """Called (with no request running) before a TrainStep: e.g. release the KV cache (vLLM standby)."""

    def resume_after_training(self) -> None:
        """Called after the TrainStep, before sampling resumes: undo ``pause_for_training``."""

    def add_adapter(self, name: str, adapter_dir: Path) -> None:
        """Make a saved adapter (a PEFT checkpoint directory) available to sample from as ``name``."""

    def remove_adapter(self, name: str) -> None:
        """Forget a saved adapter added by ``add_adapter``."""

    def shutdown(self) -> None:
        """Release the engine's resources."""
