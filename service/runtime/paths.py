"""Resolving model names to directories, confined to the configured roots."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoConfig

from service.errors import InvalidArgument, NotFound
from service.tiny_model import ensure_builtin_model, is_builtin


def confined_path(root: Path, relative: str, field: str) -> Path:
    """``root / relative`` after resolving symlinks, refusing anything that leaves ``root``."""
    parts = PurePosixPath(relative)
    if not relative or parts.is_absolute() or ".." in parts.parts or "\\" in relative or "\x00" in relative:
        raise InvalidArgument(field, f"{relative!r} must be a relative name without '..' (paths are confined to the server's roots)")
    resolved_root = root.resolve()
    candidate = (resolved_root / relative).resolve()
    if not candidate.is_relative_to(resolved_root):
        raise InvalidArgument(field, f"{relative!r} leaves the server's root (symlink escape)")
    return candidate


def resolve_model_dir(name: str, model_roots: tuple[Path, ...], cache_dir: Path) -> Path:
    """A built-in model (made on first use) or a directory under one of the model roots."""
    if is_builtin(name):
        return ensure_builtin_model(name, cache_dir)
    for root in model_roots:
        candidate = confined_path(root, name, "model_name")
        if (candidate / "config.json").is_file():
            check_builtin_architecture(name, candidate)
            return candidate
    confined_path(Path("/"), name, "model_name")  # reject absolute and '..' names even with no roots
    roots = "no model roots are configured (start the server with --model-root)" if not model_roots else f"{len(model_roots)} model root(s)"
    raise NotFound(f"model {name!r} was not found: {roots}; built-in models are tandem/tiny and tandem/tinyllama-1.1b-random")


def check_builtin_architecture(name: str, model_dir: Path) -> None:
    """The model must be a causal LM whose classes ship with transformers: its config.json loads without remote
    code (trust_remote_code is never enabled) and transformers has a built-in causal-LM class for that config.

    Checked before the loaded model is released, so such a request leaves it serving.
    """
    try:
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    except (ValueError, OSError) as error:  # transformers' words name server paths: not passed on
        raise InvalidArgument(
            "model_name",
            f"{name!r} has a config.json that transformers cannot load without running the model's own code "
            f"(trust_remote_code is never enabled) or that is invalid ({type(error).__name__})",
        ) from None
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise InvalidArgument("model_name", f"{name!r} is a {config.model_type!r} model, which has no built-in causal-LM class in transformers")
