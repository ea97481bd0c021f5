"""Reads of the trainer inside vLLM's engine process, for the GPU tests (sent with ``host.inspect``).

Each is a module-level function of the LoadedModel, so it travels by name to
the engine's process (the repository root is on its import path there).
"""

from __future__ import annotations

from service.runtime.memory import base_weight_tensors


def weight_sharing(loaded) -> dict:
    """How the trainer's frozen weights relate to vLLM's own parameters."""
    import bitsandbytes as bnb

    vllm_model = loaded.engine.model_runner.get_model()
    vllm_storages = {p.untyped_storage().data_ptr() for p in vllm_model.parameters()}
    frozen = [p for p in loaded.model.parameters() if not p.requires_grad]
    return {
        "frozen": len(frozen),
        "not_shared": [tuple(p.shape) for p in frozen if p.untyped_storage().data_ptr() not in vllm_storages],
        "linear4bit": sum(isinstance(m, bnb.nn.Linear4bit) for m in loaded.model.modules()),
        "base_tensors": sum(t.numel() for t in base_weight_tensors(loaded.model)),
    }


def frozen_pointers(loaded) -> list[int]:
    """Addresses of the trainer's frozen weights."""
    return [p.data_ptr() for p in loaded.model.parameters() if not p.requires_grad]


def standby_released_bytes(loaded) -> int:
    """What the last standby release gave back."""
    return loaded.engine.standby.released_bytes


def save_peft(loaded, directory: str) -> None:
    """Write the trained adapter with PEFT's save_pretrained."""
    loaded.model.save_pretrained(directory)
