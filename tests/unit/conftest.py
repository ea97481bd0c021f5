"""Unit-test fixtures: the transformers engine on the built-in tiny 4-bit model, in process."""

from pathlib import Path

import pytest
import torch

from service.runtime.engines.base import BuildContext
from service.runtime.engines.transformers_backend import build
from service.runtime.model import load_tokenizer
from service.runtime.specs import LoadSpec
from service.tiny_model import ensure_builtin_model


@pytest.fixture(scope="module")
def engine(tiny_cache: Path):
    """A transformers engine whose adapter has non-zero weights (so LoRA is exercised)."""
    model_dir = ensure_builtin_model("tandem/tiny", tiny_cache)
    spec = LoadSpec()
    built = build(BuildContext(spec, model_dir, load_tokenizer(model_dir), torch.float32, torch.device("cpu"), lambda *a, **k: None))
    # Give the adapter non-zero weights so the test covers LoRA in the batched path.
    with torch.no_grad():
        for name, param in built.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    return built.engine
