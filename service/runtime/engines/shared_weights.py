"""The trainer's model built over vLLM's own weights: one copy of the 4-bit base.

vLLM's bitsandbytes loader keeps each linear layer as one packed uint8
parameter with a ``bnb_quant_state`` per shard and the shard boundaries in
``bnb_shard_offsets``; q/k/v are fused as ``qkv_proj`` and gate/up as
``gate_up_proj``. Here a transformers model of the same architecture is made
on the meta device and every tensor is then pointed at vLLM's storage: each
linear projection becomes a bitsandbytes ``Linear4bit`` over its shard's slice
of the packed parameter (a view, no copy) with that shard's quant state, its
absmax dequantized once (``trainer_quant_state``) (or,
without 4-bit, an ``nn.Linear`` over its rows of vLLM's weight);
embeddings, norms and the LM head are views of vLLM's parameters. Only the
rotary-embedding tables (a few KiB) are new. PEFT then attaches LoRA to this
model exactly as it does to a model loaded with ``from_pretrained``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bitsandbytes as bnb
import torch
from bitsandbytes.functional import QuantState
from transformers import AutoConfig, AutoModelForCausalLM

from service.errors import FailedPrecondition

PACKED_PROJECTIONS: dict[str, tuple[str, ...]] = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
}
"""vLLM's fused layers and the transformers projections they hold, in shard order."""


@dataclass(frozen=True)
class ShardRef:
    """Where one transformers projection lives inside vLLM's model."""

    vllm_module: str
    shard: int


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The layer under vLLM's LoRA wrapper (``base_layer``), or the module itself."""
    return getattr(module, "base_layer", module)


def shard_ref(hf_linear_name: str) -> ShardRef:
    """Map a transformers projection name (``model.layers.0.self_attn.k_proj``) to vLLM's fused layer and shard."""
    parent, _, leaf = hf_linear_name.rpartition(".")
    for fused, parts in PACKED_PROJECTIONS.items():
        if leaf in parts:
            return ShardRef(f"{parent}.{fused}", parts.index(leaf))
    return ShardRef(hf_linear_name, 0)


def shared_linear(vllm_layer: torch.nn.Module, shard: int, compute_dtype: torch.dtype) -> torch.nn.Module:
    """A frozen linear layer over one shard of a vLLM layer's weight: ``Linear4bit`` when vLLM packed it in 4 bits."""
    if isinstance(getattr(vllm_layer.weight, "bnb_quant_state", None), dict):
        layer = _shared_linear4bit(vllm_layer, shard, compute_dtype)
    else:
        layer = _shared_dense_linear(vllm_layer, shard)
    bias = getattr(vllm_layer, "bias", None)
    if bias is not None:
        start = _shard_start(vllm_layer, shard)
        layer.bias = torch.nn.Parameter(bias.data[start : start + layer.out_features], requires_grad=False)
    return layer


def _shard_sizes(vllm_layer: torch.nn.Module) -> list[int]:
    """Output rows of each shard of a (possibly fused) vLLM layer."""
    states = getattr(vllm_layer.weight, "bnb_quant_state", None)
    if isinstance(states, dict):
        return [states[i].shape[0] for i in sorted(states)]
    return list(getattr(vllm_layer, "output_sizes", [vllm_layer.weight.shape[0]]))


def _shard_start(vllm_layer: torch.nn.Module, shard: int) -> int:
    """First output row of ``shard``."""
    return sum(_shard_sizes(vllm_layer)[:shard])


def trainer_quant_state(state: QuantState, compute_dtype: torch.dtype) -> QuantState:
    """The trainer's own quant state for a vLLM shard: the same 4-bit codes, absmax stored flat.

    vLLM quantizes with double quantization: each use first dequantizes the absmax (one more
    kernel and its Python per projection, forward and backward). Dequantized once here, in
    float32, it costs 4 bytes per 64 weights (61 MB for the 1.1B benchmark model) and vLLM's own states stay
    as they were. Dequantized weights come out in ``compute_dtype``.
    """
    absmax = state.absmax
    if state.nested:
        absmax = bnb.functional.dequantize_blockwise(state.absmax, state.state2) + state.offset
    return QuantState(
        absmax=absmax.float(),
        shape=state.shape,
        code=state.code,
        blocksize=state.blocksize,
        quant_type=state.quant_type,
        dtype=compute_dtype,
    )


def _shared_linear4bit(vllm_layer: torch.nn.Module, shard: int, compute_dtype: torch.dtype) -> bnb.nn.Linear4bit:
    packed = vllm_layer.weight
    offsets = packed.bnb_shard_offsets
    state = trainer_quant_state(packed.bnb_quant_state[shard], compute_dtype)
    out_features, in_features = state.shape
    layer = bnb.nn.Linear4bit(
        in_features, out_features, bias=False, compute_dtype=compute_dtype, compress_statistics=False, quant_type="nf4", device="meta"
    )
    layer.weight = bnb.nn.Params4bit(
        packed.data[int(offsets[shard]) : int(offsets[shard + 1])],
        requires_grad=False,
        quant_state=state,
        blocksize=state.blocksize,
        compress_statistics=False,
        quant_type=state.quant_type,
        quant_storage=packed.dtype,
        module=layer,
        bnb_quantized=True,
    )
    return layer


def _shared_dense_linear(vllm_layer: torch.nn.Module, shard: int) -> torch.nn.Linear:
    start = _shard_start(vllm_layer, shard)
    weight = vllm_layer.weight.data[start : start + _shard_sizes(vllm_layer)[shard]]
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    layer.weight = torch.nn.Parameter(weight, requires_grad=False)
    return layer


def _frozen_view(tensor: torch.Tensor, rows: int | None = None) -> torch.nn.Parameter:
    """A frozen parameter over (the first ``rows`` of) a vLLM tensor.

    Autograd cannot save inference-mode tensors for backward; should vLLM have
    made one in that mode, it is cloned (a norm's weight is a few KiB).
    """
    data = tensor.data if rows is None else tensor.data[:rows]
    if data.is_inference():
        data = data.clone()
    return torch.nn.Parameter(data, requires_grad=False)


def _linear_names(model: torch.nn.Module) -> Iterator[str]:
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            yield name


def _dense_names(model: torch.nn.Module) -> Iterator[str]:
    """Non-linear parameters: embeddings, norms, the LM head."""
    linear = set(_linear_names(model))
    for name, _ in model.named_parameters():
        if name.rpartition(".")[0] not in linear:
            yield name


def build_shared_causal_lm(model_dir: Path, vllm_model: torch.nn.Module, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """A transformers causal LM whose every base weight is a view of ``vllm_model``'s tensors."""
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    config.dtype = dtype
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    vllm_modules = dict(vllm_model.named_modules())
    for name in list(_linear_names(model)):
        ref = shard_ref(name)
        if ref.vllm_module not in vllm_modules:
            raise FailedPrecondition(f"vLLM's model has no layer {ref.vllm_module!r} for {name!r}: this architecture is not supported with fast_inference")
        model.set_submodule(name, shared_linear(unwrap(vllm_modules[ref.vllm_module]), ref.shard, dtype))
    vocab = config.vocab_size
    for name in list(_dense_names(model)):
        owner_name, _, attribute = name.rpartition(".")
        source = unwrap(vllm_modules[owner_name])
        rows = vocab if owner_name in ("lm_head", "model.embed_tokens") else None
        setattr(model.get_submodule(owner_name), attribute, _frozen_view(getattr(source, attribute), rows))
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    _rebuild_rotary(model, config, device)
    leftovers = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if leftovers:
        raise FailedPrecondition(f"could not share these weights with the vLLM engine: {leftovers[:5]}")
    model.eval()
    return model


def _rebuild_rotary(model: torch.nn.Module, config, device: torch.device) -> None:
    """Rotary tables are computed, not loaded: make them again on the device."""
    for name, module in list(model.named_modules()):
        if name.endswith("rotary_emb"):
            with torch.device(device):
                model.set_submodule(name, type(module)(config=config))
