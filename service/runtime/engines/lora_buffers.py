"""The trained adapter's weights copied into vLLM's stacked LoRA buffers, in memory.

Every LoRA-wrapped layer in vLLM holds, per slice (q/k/v of ``qkv_proj``,
gate/up of ``gate_up_proj``, or the one slice of other layers), a buffer
``lora_a_stacked[slice]`` of shape (max_loras, 1, max_rank, in) and
``lora_b_stacked[slice]`` of shape (max_loras, 1, out, max_rank). The adapter
in slot ``s`` is ``A = a[s, 0, :r, :]`` and ``B = b[s, 0, :, :r]``, with the
LoRA scaling (alpha / r) folded into B, as vLLM's own loader does. A sync is a
device-to-device copy of the PEFT model's A and B into those views: no file,
no CPU round trip, and the CUDA graphs that read the buffers see the new
values at their next replay.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

from service.errors import InvalidArgument
from service.runtime.engines.shared_weights import shard_ref

PEFT_ADAPTER = "default"
"""The PEFT adapter name of the trained adapter (attach_lora uses PEFT's default)."""
_PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoraPair:
    """One projection's trained LoRA weights and their scaling."""

    name: str
    """transformers module name, e.g. model.layers.0.self_attn.q_proj"""
    a: torch.Tensor
    """(r, in)"""
    b: torch.Tensor
    """(out, r)"""
    scaling: float


def trained_lora_pairs(peft_model: torch.nn.Module) -> Iterator[LoraPair]:
    """The trained adapter's (A, B, scaling) for every projection PEFT wrapped."""
    for name, module in peft_model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if not isinstance(lora_a, torch.nn.ModuleDict) or PEFT_ADAPTER not in lora_a:
            continue
        yield LoraPair(
            name=name.removeprefix(_PEFT_PREFIX),
            a=lora_a[PEFT_ADAPTER].weight,
            b=module.lora_B[PEFT_ADAPTER].weight,
            scaling=float(module.scaling[PEFT_ADAPTER]),
        )


class LoraBufferSync:
    """Copies the trained adapter into one slot of vLLM's stacked LoRA buffers."""

    def __init__(self, pairs: list[LoraPair], vllm_lora_layers: Mapping[str, torch.nn.Module], slot: int) -> None:
        self._a_src: list[torch.Tensor] = []
        self._a_dst: list[torch.Tensor] = []
        self._b_src: list[torch.Tensor] = []
        self._b_dst: list[torch.Tensor] = []
        self._scales: list[float] = []
        for pair in pairs:
            ref = shard_ref(pair.name)
            layer = vllm_lora_layers.get(ref.vllm_module)
            if layer is None:
                raise InvalidArgument("lora.target_modules", f"the vLLM engine serves no LoRA on {pair.name!r}: target only the attention and MLP projections")
            rank = pair.a.shape[0]
            a_view = layer.lora_a_stacked[ref.shard][slot, 0, :rank, :]
            b_view = layer.lora_b_stacked[ref.shard][slot, 0, :, :rank]
            if a_view.shape != pair.a.shape or b_view.shape != pair.b.shape:
                raise InvalidArgument(
                    "lora", f"{pair.name}: trainer LoRA shapes {tuple(pair.a.shape)}/{tuple(pair.b.shape)} do not fit the engine's {tuple(a_view.shape)}/{tuple(b_view.shape)}"
                )
            self._a_src.append(pair.a)
            self._a_dst.append(a_view)
            self._b_src.append(pair.b)
            self._b_dst.append(b_view)
            self._scales.append(pair.scaling)
        self._scaled = any(scale != 1.0 for scale in self._scales)

    @torch.inference_mode()  # vLLM may have made its buffers as inference tensors: update them in that mode
    def copy(self) -> float:
        """Copy the current A and B into the engine's buffers, then scale B there (as vLLM's loader does, in the
        engine's dtype); return seconds, copies completed."""
        started = time.perf_counter()
        torch._foreach_copy_(self._a_dst, self._a_src)
        torch._foreach_copy_(self._b_dst, self._b_src)
        if self._scaled:
            torch._foreach_mul_(self._b_dst, self._scales)
        torch.cuda.current_stream().synchronize()
        return time.perf_counter() - started
