"""The trained adapter's state as checkpoint contents, and back (SaveAdapter / LoadAdapter).

Runs where the model lives (see model_ops.py). A checkpoint holds everything a TrainStep's result
depends on besides the base weights and the batch: the LoRA weights (bit-exact
through safetensors), the AdamW moments and step counts, the gradient of
micro-batches accumulated but not yet applied, and the random number state
(LoRA dropout). So a run resumed from a checkpoint computes the same losses
for the same batches as a run that never stopped.
"""

from __future__ import annotations

import time

import torch

from service.errors import FailedPrecondition
from service.runtime.checkpoints import CheckpointContents, CheckpointMetadata
from service.runtime.model import LoadedModel


def capture(loaded: LoadedModel, name: str) -> CheckpointContents:
    """Snapshot the trained adapter, optimizer and counters as a checkpoint named ``name``."""
    adapter = loaded.model.active_adapter
    # As PEFT's save_pretrained writes it (sets as lists): a loadable inference adapter naming its base model.
    peft_config = {k: sorted(v) if isinstance(v, set) else v for k, v in loaded.model.peft_config[adapter].to_dict().items()}
    peft_config.update(inference_mode=True, base_model_name_or_path=loaded.spec.model_name)
    state = loaded.state
    return CheckpointContents(
        metadata=CheckpointMetadata(
            name=name,
            step=state.step,
            adapter_version=state.adapter_version,
            model_name=loaded.spec.model_name,
            lora=loaded.spec.lora,
            created_unix_seconds=time.time(),
        ),
        lora_weights={key: p.detach().cpu().clone() for key, p in _peft_keyed_parameters(loaded).items()},
        peft_config=peft_config,
        training_state={
            "parameter_names": _trainable_names(loaded),
            "optimizer": loaded.optimizer.state_dict(),
            "accumulated": None if state.accumulated is None else [g.detach().cpu() for g in state.accumulated],
            "micro_batches": state.micro_batches,
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(loaded.device) if loaded.device.type == "cuda" else None,
        },
    )


def restore(loaded: LoadedModel, contents: CheckpointContents) -> None:
    """Make the checkpoint the trained adapter's state: weights, optimizer, accumulation, RNG and step.

    Everything is checked before anything changes: a checkpoint of another base
    model or LoRA shape is FAILED_PRECONDITION and leaves the adapter as it was.
    The adapter version moves past both the current one and the checkpoint's,
    so samples taken before and after the load never share a version.
    """
    metadata, training = contents.metadata, contents.training_state
    parameters = _checked_parameters(loaded, contents)
    loaded.optimizer.load_state_dict(training["optimizer"])  # validates group sizes before it changes anything
    _copy_weights(parameters, contents)
    state = loaded.state
    accumulated = training["accumulated"]
    state.accumulated = None if accumulated is None else [g.to(device=p.device, dtype=p.dtype) for g, p in zip(accumulated, loaded.trainable)]
    state.micro_batches = training["micro_batches"]
    torch.set_rng_state(training["rng_cpu"])
    if training["rng_cuda"] is not None and loaded.device.type == "cuda":
        torch.cuda.set_rng_state(training["rng_cuda"], loaded.device)
    state.step = metadata.step
    state.adapter_version = max(state.adapter_version, metadata.adapter_version) + 1


def restore_weights(loaded: LoadedModel, contents: CheckpointContents) -> None:
    """Serve a published adapter (sampler role): its LoRA weights, step and version; the optimizer is not touched.

    The version is the publisher's, so every replica reports the same number for the same weights.
    """
    parameters = _checked_parameters(loaded, contents)
    _copy_weights(parameters, contents)
    loaded.state.accumulated, loaded.state.micro_batches = None, 0
    loaded.state.step = contents.metadata.step
    loaded.state.adapter_version = contents.metadata.adapter_version


def _checked_parameters(loaded: LoadedModel, contents: CheckpointContents) -> dict[str, torch.nn.Parameter]:
    """The trained parameters by file key, once the checkpoint is known to fit them (else FAILED_PRECONDITION)."""
    metadata = contents.metadata
    _check_compatible(loaded, metadata)
    parameters = _peft_keyed_parameters(loaded)
    if set(parameters) != set(contents.lora_weights) or contents.training_state["parameter_names"] != _trainable_names(loaded):
        raise FailedPrecondition(f"adapter checkpoint {metadata.name!r} does not hold this model's LoRA parameters: it was saved from another model setup")
    for key, parameter in parameters.items():
        if contents.lora_weights[key].shape != parameter.shape:
            raise FailedPrecondition(f"adapter checkpoint {metadata.name!r}: {key} has shape {tuple(contents.lora_weights[key].shape)}, this model {tuple(parameter.shape)}")
    return parameters


def _copy_weights(parameters: dict[str, torch.nn.Parameter], contents: CheckpointContents) -> None:
    with torch.no_grad():
        for key, parameter in parameters.items():
            parameter.copy_(contents.lora_weights[key])


def _check_compatible(loaded: LoadedModel, metadata: CheckpointMetadata) -> None:
    lora, saved = loaded.spec.lora, metadata.lora
    if metadata.model_name != loaded.spec.model_name:
        raise FailedPrecondition(
            f"adapter checkpoint {metadata.name!r} was trained on {metadata.model_name!r} but {loaded.spec.model_name!r} is loaded: "
            "LoadModel that model first"
        )
    if (saved.rank, saved.alpha, sorted(saved.target_modules)) != (lora.rank, lora.alpha, sorted(lora.target_modules)):
        raise FailedPrecondition(
            f"adapter checkpoint {metadata.name!r} has LoRA rank {saved.rank}, alpha {saved.alpha:g}, targets {list(saved.target_modules)}; "
            f"the loaded adapter has rank {lora.rank}, alpha {lora.alpha:g}, targets {list(lora.target_modules)}: LoadModel with the checkpoint's LoRA settings"
        )


def _trainable_names(loaded: LoadedModel) -> list[str]:
    """Names of the trained parameters, in the optimizer's order."""
    name_of = {id(p): n for n, p in loaded.model.named_parameters()}
    return [name_of[id(p)] for p in loaded.trainable]


def _peft_keyed_parameters(loaded: LoadedModel) -> dict[str, torch.nn.Parameter]:
    """The trained parameters under PEFT's file keys (the adapter name removed), as PEFT's
    ``get_peft_model_state_dict`` names them, without its ``model.state_dict()`` over the whole 4-bit model."""
    adapter = loaded.model.active_adapter
    return {name.replace(f".{adapter}", ""): p for name, p in zip(_trainable_names(loaded), loaded.trainable)}

