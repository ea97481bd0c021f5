"""Memory accounting: process RSS, accelerator memory, and what the model's parts take."""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def process_rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except OSError:
        return 0


def device_memory(device: torch.device | None = None) -> tuple[int, int, int]:
    """(allocated, reserved, total) bytes on the CUDA device; zeros without one."""
    if not torch.cuda.is_available():
        return 0, 0, 0
    index = torch.cuda.current_device() if device is None or device.index is None else device.index
    total = torch.cuda.get_device_properties(index).total_memory
    return torch.cuda.memory_allocated(index), torch.cuda.memory_reserved(index), total


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes held by distinct tensors (shared storage counted once)."""
    seen: set[int] = set()
    total = 0
    for tensor in tensors:
        if tensor.device.type == "meta":
            continue
        key = tensor.untyped_storage().data_ptr()
        if key in seen:
            continue
        seen.add(key)
        total += tensor.untyped_storage().nbytes()
    return total


def base_weight_tensors(model: torch.nn.Module) -> Iterable[torch.Tensor]:
    """Frozen parameters and buffers, plus bitsandbytes quantization state tensors."""
    for param in model.parameters():
        if param.requires_grad:
            continue
        yield param
        quant_state = getattr(param, "quant_state", None)
        if quant_state is not None:
            yield from (t for t in quant_state.as_dict(packed=False).values() if isinstance(t, torch.Tensor))
    yield from model.buffers()


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's state tensors (AdamW: two moments per parameter)."""
    return tensor_bytes(v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor))
