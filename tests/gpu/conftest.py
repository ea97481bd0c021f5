"""GPU fixtures: one vLLM-engine model on the 1.1B shape, loaded once per session.

Every test here is marked ``gpu`` (the default pytest run deselects them) and
skips without a CUDA GPU and vLLM. The engine runs eagerly (no torch.compile,
no CUDA graphs) so it starts in seconds; the benchmark program measures the
compiled engine. vLLM's engine core (and the trainer) run in a child process
started with ``spawn``, as under ``python -m service``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from service.config import ServerConfig
from service.metrics import Metrics
from service.runtime.controller import Controller
from service.runtime.engines import vllm_backend
from service.runtime.specs import LoadSpec, LoraSpec, ModelDescription

GPU_MODEL = "tandem/tinyllama-1.1b-random"


@pytest.fixture(scope="session")
def gpu_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache directory holding the built-in 1.1B-shaped model, made once."""
    from service.tiny_model import ensure_builtin_model

    cache = Path(os.environ.get("TANDEM_TEST_CACHE") or tmp_path_factory.mktemp("tandem-gpu-cache"))
    ensure_builtin_model(GPU_MODEL, cache)
    return cache


async def load(controller: Controller, spec: LoadSpec) -> ModelDescription:
    """Run LoadModel to the end; return the description."""
    description = None
    async for event in controller.load_model(spec):
        if isinstance(event, ModelDescription):
            description = event
    assert description is not None
    return description


@pytest.fixture(scope="session")
async def controller(gpu_cache: Path) -> AsyncIterator[Controller]:
    """A runtime with the 1.1B model on the vLLM engine: 4-bit, LoRA rank 64, standby on, one saved-adapter slot."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vllm_backend, "OPTIONS", vllm_backend.VllmOptions(enforce_eager=True, max_num_seqs=64))
        vllm_backend.configure_process()
        runtime = Controller(ServerConfig(cache_dir=gpu_cache, startup_model=None), Metrics(CollectorRegistry()))
        runtime.start()
        spec = LoadSpec(
            model_name=GPU_MODEL,
            max_seq_length=1024,
            fast_inference=True,
            gpu_memory_utilization=0.4,
            lora=LoraSpec(rank=64, alpha=64.0),
            standby=True,
            max_loras=1,
        )
        await load(runtime, spec)
        yield runtime
        await runtime.stop()
