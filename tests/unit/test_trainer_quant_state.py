"""The trainer's quant state over vLLM's double-quantized NF4 codes dequantizes to the same weights."""

import pytest
import torch
from bitsandbytes.functional import dequantize_4bit, quantize_4bit

from service.runtime.engines.shared_weights import trainer_quant_state


@pytest.mark.parametrize("weight_dtype", [torch.bfloat16, torch.float32])
def test_flat_absmax_dequantizes_to_the_same_weights(weight_dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    weight = torch.randn(256, 192, dtype=weight_dtype)
    codes, nested = quantize_4bit(weight, compress_statistics=True, quant_type="nf4")  # as vLLM's loader does
    assert nested.nested

    flat = trainer_quant_state(nested, torch.bfloat16)

    assert not flat.nested and flat.state2 is None
    assert flat.absmax.dtype == torch.float32 and flat.absmax.numel() == weight.numel() // flat.blocksize
    assert nested.nested, "vLLM's own state is left as it was"
    expected = dequantize_4bit(codes, nested).to(torch.bfloat16)
    got = dequantize_4bit(codes, flat)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, expected)
