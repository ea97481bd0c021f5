"""The trainer's model: the base in 4 bits through transformers + bitsandbytes, LoRA through PEFT.

What every engine kind shares about the trainer's model: picking the device
and dtype, loading a base with ``from_pretrained`` (the transformers engine),
attaching the LoRA adapter (both engines; with vLLM over the engine's own
weights, see ``engines/shared_weights.py``) and checking LoRA targets before a
load releases the old model.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

from service.errors import InvalidArgument
from service.runtime.specs import DType, LoadSpec

TORCH_DTYPES = {DType.FLOAT32: torch.float32, DType.FLOAT16: torch.float16, DType.BFLOAT16: torch.bfloat16}


def pick_device() -> torch.device:
    """The first CUDA device when there is one, else the CPU."""
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def resolve_dtype(requested: DType, device: torch.device) -> torch.dtype:
    """AUTO: bf16 on a GPU that has it, else fp16 on GPU; fp32 on CPU."""
    if requested is not DType.AUTO:
        return TORCH_DTYPES[requested]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_hf_base(model_dir: Path, spec: LoadSpec, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """The base model through transformers, NF4-quantized by bitsandbytes when load_in_4bit."""
    quantization = (
        BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=False)
        if spec.load_in_4bit
        else None
    )
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, quantization_config=quantization, dtype=dtype, device_map={"": device}, trust_remote_code=False
    )
    _keep_cpu_weight_layout(model)
    return model


def _keep_cpu_weight_layout(model: torch.nn.Module) -> None:
    """Stop bitsandbytes repacking 4-bit weights for AVX512-BF16 CPUs at the first eval forward.

    bitsandbytes 0.50 unpacks them again in ``state_dict()`` (which PEFT's
    ``load_adapter`` calls), and the next forward repacks them wrongly: every
    output changes. Keeping the plain layout makes saving and loading adapters
    leave the base model as it is, at some CPU speed.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def attach_lora(base: torch.nn.Module, spec: LoadSpec) -> torch.nn.Module:
    """Wrap the base in a PEFT LoRA model, seeded by random_state; only LoRA weights train."""
    if spec.gradient_checkpointing:
        _enable_activation_checkpointing(base)
        base.enable_input_require_grads()
    config = LoraConfig(
        r=spec.lora.rank,
        lora_alpha=spec.lora.alpha,
        lora_dropout=spec.lora.dropout,
        target_modules=list(spec.lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.random_state)
        try:
            return get_peft_model(base, config)
        except ValueError as error:  # PEFT names the modules it could not find
            raise InvalidArgument("lora.target_modules", str(error)) from None


def _enable_activation_checkpointing(base: torch.nn.Module) -> None:
    """Recompute activations in backward: ``activation_checkpointing_enable`` from transformers 5.23 (the older name
    warns there); the GPU kit's transformers 5.17 has only ``gradient_checkpointing_enable``."""
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def check_lora_targets(model_dir: Path, spec: LoadSpec) -> None:
    """Attach the LoRA to a weightless (meta-device) copy of the architecture, so target modules
    the model lacks, or cannot adapt, fail before the loaded model is released (well under a second)."""
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    attach_lora(skeleton, replace(spec, gradient_checkpointing=False))


def eos_ids(tokenizer, base_config) -> tuple[int, ...]:
    """End-of-sequence ids from the generation config or tokenizer."""
    configured = getattr(base_config, "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    ids = [i for i in ids if i is not None] or [tokenizer.eos_token_id]
    return tuple(int(i) for i in ids)
