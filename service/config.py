"""The server's configuration: one frozen object built once from flags.

Nothing reads the environment at import time; :func:`default_cache_dir` is
called while the flags are parsed.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def default_cache_dir() -> Path:
    """Where built-in models are written: $TANDEM_CACHE_DIR, else $XDG_CACHE_HOME/tandem."""
    explicit = os.environ.get("TANDEM_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tandem"


def _limit(default: int, help: str) -> Any:
    """A Limits field whose help text becomes the server flag's help (see service/__main__.py)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Limits:
    """Bounds on one request and on load. Over a size limit: INVALID_ARGUMENT;
    over a load limit: RESOURCE_EXHAUSTED. Each message names the limit.

    Every field is a server flag (``--max-new-tokens`` ...); docs/security.md lists them.
    """

    max_prompts_per_request: int = _limit(256, "Generate: most prompts in one request; Tokenize, Detokenize: most inputs")
    max_samples_per_prompt: int = _limit(64, "Generate: largest sampling.n")
    max_new_tokens: int = _limit(4096, "Generate: largest sampling.max_tokens")
    max_top_logprobs: int = _limit(20, "Generate: largest sampling.logprobs (top alternatives per token)")
    max_stop_strings: int = _limit(16, "Generate: most sampling.stop strings")
    max_train_sequences: int = _limit(512, "TrainStep and ComputeLogprobs: most sequences in one request")
    max_train_tokens: int = _limit(262_144, "TrainStep and ComputeLogprobs: most tokens in one request, all sequences together")
    max_message_bytes: int = _limit(64 * 1024 * 1024, "largest gRPC message received or sent, in bytes (enforced by gRPC: RESOURCE_EXHAUSTED)")
    max_concurrent_rpcs: int = _limit(512, "TandemService calls running at once; more are refused with RESOURCE_EXHAUSTED (health is not counted)")
    max_queued_generations: int = _limit(4096, "samples (prompts x n) queued or decoding at once; more are refused with RESOURCE_EXHAUSTED")


@dataclass(frozen=True)
class TlsConfig:
    """Certificate files for TLS; with ``client_ca_file`` clients must present a certificate it signed (mutual TLS)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


class Role(enum.Enum):
    """Which part of the train/sample loop a server plays (``--role``)."""

    BOTH = "both"
    """Trains and samples: one process, one GPU."""
    TRAINER = "trainer"
    """Trains, samples for evaluation, publishes adapter versions to the adapter store."""
    SAMPLER = "sampler"
    """Samples with the newest published adapter version; refuses TrainStep, SaveAdapter and LoadAdapter."""


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
    auth_token: str | None = field(default=None, repr=False)
    """When set, every call except health needs ``authorization: Bearer <auth_token>`` metadata."""
    tls: TlsConfig | None = None
    """When set, the gRPC port speaks TLS (mutual TLS with a client CA); else plaintext."""
    reflection: bool = True
    """Serve gRPC server reflection (what grpcurl uses to learn the API)."""
    health_port: int | None = None
    """A second, plaintext port serving only grpc.health.v1, for probes that cannot do TLS or tokens; None = off."""
    role: Role = Role.BOTH
    adapter_store: Path | None = None
    """Directory where a trainer publishes adapter versions and samplers read them (a ReadWriteMany volume)."""
    trainer_address: str | None = None
    """Sampler only: where TrainStep goes, named in its refusals and in GetModel."""
    max_adapter_wait_seconds: float = 30.0
    """Longest a Generate with min_adapter_version waits for that version when the call has no deadline."""
    torch_threads: int | None = None
    """CPU threads torch uses inside one operation; None = torch's default (one per core). On CPUs shared
    with other busy processes, fewer threads avoid OpenMP stalls (see BENCHMARKS.md, Soak)."""
    engine_compile: bool = True
    """The vLLM engine compiles its model with torch.compile (``--engine-compile``): faster generation,
    slower first start; see ``VllmOptions.torch_compile``."""
    train_compile: bool = True
    """The vLLM engine's trainer compiles its decoder layers (``--train-compile``): see ``VllmOptions.compile_training``."""

    @property
    def resolved_checkpoint_root(self) -> Path:
        """Where adapter checkpoints live (default: <cache_dir>/adapters)."""
        return self.checkpoint_root or self.cache_dir / "adapters"
