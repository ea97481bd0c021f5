"""Builds the transformers engine: from_pretrained in 4 bits, LoRA on top, generate on that model."""

from __future__ import annotations

from service.runtime.engines.base import BuildContext, BuiltModel
from service.runtime.engines.transformers_engine import TransformersEngine
from service.runtime.peft_model import attach_lora, eos_ids, load_hf_base
from service.runtime.specs import LoadPhase


def build(ctx: BuildContext) -> BuiltModel:
    """Load the base with transformers + bitsandbytes, attach LoRA, sample on the same model."""
    ctx.report(LoadPhase.WEIGHTS, "loading base weights" + (" as NF4 4-bit" if ctx.spec.load_in_4bit else ""))
    base = load_hf_base(ctx.model_dir, ctx.spec, ctx.dtype, ctx.device)
    layers = base.config.num_hidden_layers
    ctx.report(LoadPhase.WEIGHTS, "base weights loaded", layers, layers, "layers")
    ctx.report(LoadPhase.ADAPTER, f"attaching LoRA rank {ctx.spec.lora.rank}")
    model = attach_lora(base, ctx.spec)
    eos = eos_ids(ctx.tokenizer, base.config)
    ctx.report(LoadPhase.ENGINE, "starting the transformers engine")
    engine = TransformersEngine(model, ctx.tokenizer, ctx.device, eos, seed=ctx.spec.random_state)
    return BuiltModel(model=model, engine=engine, eos_token_ids=eos, vocab_size=base.config.vocab_size)
