"""The server's configuration: one frozen object built once from flags.

Nothing reads the environment at import time; :func:`default_cache_dir` is
called while the flags are parsed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def default_cache_dir() -> Path:
    """Where built-in models are written: $TANDEM_CACHE_DIR, else $XDG_CACHE_HOME/tandem."""
    explicit = os.environ.get("TANDEM_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tandem"


@dataclass(frozen=True)
class Limits:
    """Bounds on one request and on load. Over a size limit: INVALID_ARGUMENT;
    over a load limit: RESOURCE_EXHAUSTED. Each message names the limit."""

    max_prompts_per_request: int = 256
    max_samples_per_prompt: int = 64
    max_new_tokens: int = 4096
    max_top_logprobs: int = 20
    max_stop_strings: int = 16
    max_train_sequences: int = 512
    max_train_tokens: int = 262_144
    max_message_bytes: int = 64 * 1024 * 1024
    max_concurrent_rpcs: int = 512
    max_queued_generations: int = 4096


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server needs, fixed at start-up."""

    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int = 9400
    startup_model: str | None = "tandem/tiny"
    """Model to load at start-up (a built-in name or a directory under a model root); None = start empty."""
    model_roots: tuple[Path, ...] = ()
    cache_dir: Path = field(default_factory=default_cache_dir)
    checkpoint_root: Path | None = None
    grace_seconds: float = 30.0
    limits: Limits = field(default_factory=Limits)

    @property
    def resolved_checkpoint_root(self) -> Path:
        """Where adapter checkpoints live (default: <cache_dir>/adapters)."""
        return self.checkpoint_root or self.cache_dir / "adapters"
