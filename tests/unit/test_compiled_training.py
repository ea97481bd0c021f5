"""Training through compiled decoder layers: the same loss and gradients as eager, one graph for every layer and
batch shape, and scoring that stays eager.

The layers compile with torch's ``aot_eager`` backend: the graphs (forward and backward, through bitsandbytes'
4-bit ops and PEFT's LoRA) are the ones inductor would get, without generating code, which on a CPU takes
longer than the whole test. The real inductor path runs in the GPU tests, where it is the default.
"""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch._dynamo.utils import counters

from service.runtime.compiled_training import compile_decoder_layers
from service.runtime.peft_model import attach_lora, load_hf_base
from service.runtime.specs import LoadSpec
from service.tiny_model import ensure_builtin_model

SHAPES = [(4, 48), (3, 40), (2, 61)]
"""Batch shapes of successive steps: the second would recompile a statically shaped graph."""


def tiny_peft_model(cache: Path) -> torch.nn.Module:
    """The tiny model in 4 bits with a LoRA whose B is not zero (a fresh B would make LoRA's gradients trivial)."""
    model = attach_lora(load_hf_base(ensure_builtin_model("tandem/tiny", cache), LoadSpec(), torch.float32, torch.device("cpu")), LoadSpec())
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)
    return model


def loss_and_grads(model: torch.nn.Module, ids: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
    model.train()
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    trainable = [p for p in model.parameters() if p.requires_grad]
    return float(loss), list(torch.autograd.grad(loss, trainable))


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> None:
    """Forget graphs and counts of earlier tests (dynamo's counters are process-wide)."""
    torch._dynamo.reset()
    counters.clear()


def test_compiled_layers_train_exactly_as_eager_with_one_graph_for_all_layers_and_shapes(tiny_cache: Path) -> None:
    eager, compiled = tiny_peft_model(tiny_cache), tiny_peft_model(tiny_cache)
    layers = compile_decoder_layers(compiled, backend="aot_eager")
    assert layers == compiled.get_base_model().config.num_hidden_layers

    generator = torch.Generator().manual_seed(0)
    for shape in SHAPES:
        ids = torch.randint(0, 1000, shape, generator=generator)
        eager_loss, eager_grads = loss_and_grads(eager, ids)
        compiled_loss, compiled_grads = loss_and_grads(compiled, ids)
        assert compiled_loss == pytest.approx(eager_loss, rel=1e-6)
        for got, expected in zip(compiled_grads, eager_grads, strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)

    graphs = counters["stats"]["unique_graphs"]
    assert graphs == 1, f"{graphs} graphs for {layers} layers and {len(SHAPES)} shapes"


def test_scoring_runs_the_layers_eagerly(tiny_cache: Path) -> None:
    from service.runtime.training import score_sequences

    model = tiny_peft_model(tiny_cache)
    compile_decoder_layers(model, backend="aot_eager")
    loaded = SimpleNamespace(model=model, device=torch.device("cpu"))  # what score_sequences reads of a LoadedModel

    score_sequences(loaded, [[5, 6, 7, 8, 9]], "")

    assert counters["stats"]["unique_graphs"] == 0, "a ComputeLogprobs forward compiled a graph"
    loss_and_grads(model, torch.tensor([[5, 6, 7, 8, 9], [4, 3, 2, 1, 0]]))
    assert counters["stats"]["unique_graphs"] == 1, "the training forward after it did not compile"
