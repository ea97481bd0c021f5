"""TrainStep is all-or-nothing: a failure in any stage leaves every bit of training state as it was.

Fault injection (``monkeypatch``): out of accelerator memory, or any error at a
chosen stage, cannot be provoked on a CPU machine, so each test makes one stage
do its work and then raise (the worst case for a rollback: the stage has
already changed what it changes). It checks that adapter weights, AdamW
moments and step counts, hyperparameters, the accumulated gradient, counters,
``.grad`` and the random number state (LoRA dropout is on) are bit for bit as
before; that out of memory is ResourceExhausted naming the stage and what to
send instead; and that a resend gives the same state, bit for bit, as the same
step run cleanly from the same start.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from service.errors import ResourceExhausted
from service.runtime import training
from service.runtime.engines.base import BuildContext
from service.runtime.engines.transformers_backend import build
from service.runtime.model import LoadedModel, assemble_loaded_model, load_tokenizer
from service.runtime.specs import EngineKind, LoadSpec, LoraSpec, LossSpec, OptimizerSpec, StepOutcome, TrainResult
from service.runtime.validation import PreparedSequence
from service.tiny_model import ensure_builtin_model

SEQUENCES = [
    PreparedSequence(token_ids=[1, 40, 41, 42, 300, 301, 2], weights=[0, 0, 0, 0, 1, 1, 1], advantages=[0.0] * 7, sampler_logprobs=None),
    PreparedSequence(token_ids=[1, 50, 51, 500, 2], weights=[0, 0, 0, 1, 1], advantages=[0.0] * 5, sampler_logprobs=None),
]
OPTIMIZER = OptimizerSpec(learning_rate=1e-2, weight_decay=0.01)
INJECTED_OOM = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")


@pytest.fixture(scope="module")
def model(tiny_cache: Path) -> LoadedModel:
    """The tiny 4-bit model with LoRA (dropout on, so forward passes draw random numbers) and AdamW, on CPU."""
    model_dir = ensure_builtin_model("tandem/tiny", tiny_cache)
    spec = LoadSpec(lora=LoraSpec(dropout=0.1))
    tokenizer = load_tokenizer(model_dir)
    device, dtype = torch.device("cpu"), torch.float32
    built = build(BuildContext(spec, model_dir, tokenizer, dtype, device, lambda *a, **k: None))
    return assemble_loaded_model(spec, model_dir, tokenizer, EngineKind.TRANSFORMERS, built, device, dtype)


@pytest.fixture(scope="module")
def untrained(model: LoadedModel) -> State:
    """The model's state before any step."""
    return State.of(model)


@pytest.fixture
def loaded(model: LoadedModel, untrained: State) -> LoadedModel:
    """The module's model, put back to its untrained state."""
    untrained.put_into(model)
    return model


@pytest.fixture(scope="module")
def references(model: LoadedModel, untrained: State) -> Callable[[str, bool], Reference]:
    """``(history, accumulate)`` -> the state after that history and after one clean step from it (each computed once)."""
    cache: dict[tuple[str, bool], Reference] = {}

    def reference(kind: str, accumulate: bool) -> Reference:
        if (kind, accumulate) not in cache:
            untrained.put_into(model)
            history(model, Syncs(), kind)
            start = State.of(model)
            clean = step(model, Syncs(), accumulate)
            cache[kind, accumulate] = Reference(start, clean, State.of(model))
        return cache[kind, accumulate]

    return reference


class Syncs:
    """The ``on_applied`` callback: syncs the engine and records each adapter version it was asked to sync."""

    def __init__(self) -> None:
        self.versions: list[int] = []

    def __call__(self, loaded: LoadedModel) -> float:
        self.versions.append(loaded.state.adapter_version)
        return loaded.engine.sync_adapter(loaded.state.adapter_version)


def step(loaded: LoadedModel, syncs: Callable[[LoadedModel], float], accumulate: bool = False) -> TrainResult:
    return training.train_step(loaded, SEQUENCES, LossSpec(), OPTIMIZER, accumulate, time.perf_counter(), syncs)


@dataclass
class State:
    """Everything a TrainStep's result depends on besides the base weights and the batch, copied."""

    weights: list[torch.Tensor]
    optimizer: dict[str, Any]
    accumulated: list[torch.Tensor] | None
    counters: tuple[int, int, int]
    grads_unset: list[bool]
    rng: torch.Tensor

    @classmethod
    def of(cls, loaded: LoadedModel) -> State:
        state = loaded.state
        return cls(
            weights=[p.detach().clone() for p in loaded.trainable],
            optimizer=copy.deepcopy(loaded.optimizer.state_dict()),
            accumulated=None if state.accumulated is None else [g.clone() for g in state.accumulated],
            counters=(state.micro_batches, state.step, state.adapter_version),
            grads_unset=[p.grad is None for p in loaded.trainable],
            rng=torch.get_rng_state(),
        )

    def put_into(self, loaded: LoadedModel) -> None:
        """Make ``loaded`` hold this state (through PyTorch's own load_state_dict, not the code under test)."""
        with torch.no_grad():
            for param, weight in zip(loaded.trainable, self.weights):
                param.copy_(weight)
        loaded.optimizer.load_state_dict(copy.deepcopy(self.optimizer))
        loaded.state.accumulated = None if self.accumulated is None else [g.clone() for g in self.accumulated]
        loaded.state.micro_batches, loaded.state.step, loaded.state.adapter_version = self.counters
        torch.set_rng_state(self.rng)

    def assert_equal(self, other: State) -> None:
        assert self.counters == other.counters
        assert self.grads_unset == other.grads_unset
        assert_same_bits(self.weights, other.weights)
        assert_same_bits(self.optimizer, other.optimizer)
        assert_same_bits(self.accumulated, other.accumulated)
        assert torch.equal(self.rng, other.rng)


@dataclass
class Reference:
    """A start state, one clean step from it, and the state that step left."""

    start: State
    clean: TrainResult
    after_clean: State


def assert_same_bits(a: Any, b: Any) -> None:
    """Equal structure, and tensors equal bit for bit (NaNs included)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            assert_same_bits(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_bits(x, y)
    else:
        assert a == b


def then_raise(fn: Callable[..., Any], error: BaseException) -> Callable[..., Any]:
    """Injected fault: the first call runs ``fn`` (which changes what it changes), then raises ``error``; later calls just run ``fn``."""
    failed = False

    def faulty(*args: Any, **kwargs: Any) -> Any:
        nonlocal failed
        result = fn(*args, **kwargs)
        if failed:
            return result
        failed = True
        raise error

    return faulty


def inject(stage: str, monkeypatch: pytest.MonkeyPatch, loaded: LoadedModel, syncs: Syncs, error: BaseException) -> Callable[[LoadedModel], float]:
    """Make ``stage`` fail with ``error``; returns the ``on_applied`` callback to use."""
    targets = {
        "prepare": (training, "collate"),
        "forward": (training, "sequence_logprobs"),
        "backward": (torch.autograd, "grad"),
        "accumulate": (training, "_add_accumulated"),
        "clip": (torch.nn.utils, "clip_grads_with_norm_"),
        "optimizer": (loaded.optimizer, "step"),
    }
    if stage == "sync":
        return then_raise(syncs, error)
    owner, name = targets[stage]
    monkeypatch.setattr(owner, name, then_raise(getattr(owner, name), error))
    return syncs


MESSAGE_OF_STAGE = {
    "prepare": "prepare",
    "forward": "forward and backward",
    "backward": "forward and backward",
    "accumulate": "gradient accumulation",
    "clip": "optimizer step",
    "optimizer": "optimizer step",
    "sync": "adapter sync",
}
BEFORE_OPTIMIZER = ["prepare", "forward", "backward", "accumulate"]


def history(loaded: LoadedModel, syncs: Syncs, kind: str) -> None:
    """``fresh``: nothing trained yet; ``trained``: one applied step (AdamW state exists) and one micro-batch accumulated."""
    if kind == "trained":
        assert step(loaded, syncs).outcome is StepOutcome.APPLIED
        assert step(loaded, syncs, accumulate=True).outcome is StepOutcome.ACCUMULATED


def check_fault(loaded: LoadedModel, reference: Reference, monkeypatch: pytest.MonkeyPatch, stage: str, error: BaseException, accumulate: bool) -> None:
    """The contract at one stage: state unchanged after the failure, and failure + resend == one clean step."""
    start, clean, after_clean = reference.start, reference.clean, reference.after_clean
    start.put_into(loaded)
    syncs = Syncs()

    on_applied = inject(stage, monkeypatch, loaded, syncs, error)
    synced_before = len(syncs.versions)
    if isinstance(error, torch.OutOfMemoryError):
        with pytest.raises(ResourceExhausted, match=rf"out of accelerator memory in TrainStep \({MESSAGE_OF_STAGE[stage]}\).*send fewer or shorter sequences"):
            step(loaded, on_applied, accumulate)
    else:
        with pytest.raises(type(error)):
            step(loaded, on_applied, accumulate)
    State.of(loaded).assert_equal(start)
    # A failed sync is followed by one of the restored adapter, so the engine samples what the version says.
    assert syncs.versions[synced_before:] == ([clean.adapter_version, start.counters[2]] if stage == "sync" else [])
    monkeypatch.undo()

    resent = step(loaded, syncs, accumulate)
    State.of(loaded).assert_equal(after_clean)
    assert (resent.outcome, resent.loss, resent.grad_norm, resent.step, resent.adapter_version) == (
        clean.outcome,
        clean.loss,
        clean.grad_norm,
        clean.step,
        clean.adapter_version,
    )


@pytest.mark.parametrize("error", [INJECTED_OOM, RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED (injected)")], ids=["oom", "other"])
@pytest.mark.parametrize("stage", [*BEFORE_OPTIMIZER, "clip", "optimizer", "sync"])
def test_a_failed_step_changes_nothing_and_its_resend_equals_a_clean_step(loaded, references, monkeypatch, stage: str, error: BaseException) -> None:
    check_fault(loaded, references("trained", False), monkeypatch, stage, error, accumulate=False)


@pytest.mark.parametrize("stage", BEFORE_OPTIMIZER)
def test_a_failed_accumulating_call_leaves_the_accumulation_as_it_was(loaded, references, monkeypatch, stage: str) -> None:
    check_fault(loaded, references("trained", True), monkeypatch, stage, INJECTED_OOM, accumulate=True)


@pytest.mark.parametrize("stage", ["optimizer", "sync"])
def test_a_failed_first_step_leaves_adamw_without_state(loaded, references, monkeypatch, stage: str) -> None:
    check_fault(loaded, references("fresh", False), monkeypatch, stage, INJECTED_OOM, accumulate=False)
    assert len(loaded.optimizer.state) == len(loaded.trainable)  # the resend created it, once
