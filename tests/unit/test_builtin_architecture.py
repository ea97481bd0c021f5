"""A model under a root must be a causal LM that transformers builds from its own classes, without the model's code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.errors import InvalidArgument
from service.runtime.paths import resolve_model_dir


def model_root(tmp_path: Path, **config: object) -> Path:
    """A model root holding one model directory, ``model``, with ``config`` as its config.json."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_a_builtin_causal_lm_resolves(tmp_path: Path) -> None:
    root = model_root(tmp_path, model_type="llama")
    assert resolve_model_dir("model", (root,), tmp_path / "cache") == (root / "model").resolve()


def test_a_known_type_beside_an_auto_map_resolves_to_the_builtin_class(tmp_path: Path) -> None:
    root = model_root(tmp_path, model_type="llama", auto_map={"AutoModelForCausalLM": "custom.Model"})
    assert resolve_model_dir("model", (root,), tmp_path / "cache") == (root / "model").resolve()


def test_a_type_only_the_models_own_code_defines_is_refused(tmp_path: Path) -> None:
    root = model_root(tmp_path, model_type="custom_llama", auto_map={"AutoConfig": "custom.Config"})
    with pytest.raises(InvalidArgument, match="trust_remote_code is never enabled"):
        resolve_model_dir("model", (root,), tmp_path / "cache")


def test_a_builtin_model_that_is_not_a_causal_lm_is_refused(tmp_path: Path) -> None:
    root = model_root(tmp_path, model_type="vit")
    with pytest.raises(InvalidArgument, match="'vit' model, which has no built-in causal-LM class"):
        resolve_model_dir("model", (root,), tmp_path / "cache")
