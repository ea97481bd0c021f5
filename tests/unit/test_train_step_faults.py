"""TrainStep under faults that cannot be caused on a CPU machine.

Out of accelerator memory cannot be provoked here, so this test injects
torch.OutOfMemoryError into the forward/backward pass (a stand-in for the real
fault, used only for that) and checks the contract: RESOURCE_EXHAUSTED, adapter,
optimizer and accumulated gradient unchanged, and the next step works.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from prometheus_client import CollectorRegistry

from service.config import ServerConfig
from service.errors import ResourceExhausted
from service.metrics import Metrics
from service.runtime import training
from service.runtime.controller import Controller
from service.runtime.specs import LoadSpec, ModelDescription, StepOutcome, TrainSequenceSpec, TrainSpec

STEP = TrainSpec(sequences=(TrainSequenceSpec(prompt="The people", completion=" say hello"),))


@pytest.fixture
async def controller(tiny_cache: Path):
    controller = Controller(ServerConfig(cache_dir=tiny_cache), Metrics(CollectorRegistry()))
    controller.start()
    async for event in controller.load_model(LoadSpec()):
        assert not isinstance(event, BaseException)
    yield controller
    controller.stop()


def snapshot(controller: Controller) -> tuple:
    model = controller._model
    lora = [p.detach().clone() for p in model.trainable]
    moments = {k: v.clone() for state in model.optimizer.state.values() for k, v in state.items() if isinstance(v, torch.Tensor) and k == "exp_avg"}
    accumulated = None if model.state.accumulated is None else [g.clone() for g in model.state.accumulated]
    return model.state.step, model.state.adapter_version, model.state.micro_batches, lora, len(moments), accumulated


def assert_same(before: tuple, after: tuple) -> None:
    assert before[:3] == after[:3]
    assert all(torch.equal(a, b) for a, b in zip(before[3], after[3]))
    assert before[4] == after[4]
    assert (before[5] is None) == (after[5] is None)
    if before[5] is not None:
        assert all(torch.equal(a, b) for a, b in zip(before[5], after[5]))


async def test_out_of_memory_in_a_train_step_changes_nothing(controller, monkeypatch):
    await controller.train_step(STEP)  # AdamW state exists
    await controller.train_step(TrainSpec(sequences=STEP.sequences, accumulate=True))  # and an accumulated micro-batch
    before = snapshot(controller)

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(training, "_backward", out_of_memory)
    with pytest.raises(ResourceExhausted, match="out of accelerator memory"):
        await controller.train_step(STEP)
    assert_same(before, snapshot(controller))
    monkeypatch.undo()

    result = await controller.train_step(STEP)
    assert result.outcome is StepOutcome.APPLIED and result.adapter_version == before[1] + 1
    assert isinstance(controller.describe(), ModelDescription)
