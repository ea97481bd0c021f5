"""vLLM's engine arguments as Tandem sets them (no vLLM needed: the arguments are plain data)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.runtime.engines import vllm_backend
from service.runtime.specs import LoadSpec


@pytest.fixture(autouse=True)
def _restore_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vllm_backend, "OPTIONS", vllm_backend.OPTIONS)


def compilation(torch_compile: bool) -> dict:
    vllm_backend.configure_process(torch_compile=torch_compile)
    return vllm_backend.engine_kwargs(LoadSpec(model_name="m"), Path("/models/m"), vllm_backend.OPTIONS)["compilation_config"]


def test_compiled_engine_keeps_vllms_graph_modes_for_its_graph_sizes() -> None:
    config = compilation(torch_compile=True)
    assert "mode" not in config and "cudagraph_mode" not in config  # vLLM's defaults: torch.compile, full + piecewise graphs
    assert config["cudagraph_capture_sizes"] == [s for s in vllm_backend.CUDA_GRAPH_BATCH_SIZES if s <= vllm_backend.OPTIONS.max_num_seqs]


def test_without_compile_decode_replays_full_graphs() -> None:
    config = compilation(torch_compile=False)
    assert (config["mode"], config["cudagraph_mode"]) == ("NONE", "FULL_DECODE_ONLY")


def test_configure_process_keeps_the_other_engine_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vllm_backend, "OPTIONS", vllm_backend.VllmOptions(enforce_eager=True, max_num_seqs=8))
    vllm_backend.configure_process(torch_compile=False)
    assert vllm_backend.OPTIONS == vllm_backend.VllmOptions(enforce_eager=True, max_num_seqs=8, torch_compile=False)
