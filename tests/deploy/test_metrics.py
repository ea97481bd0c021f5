"""TrainStep results reach the operator metrics as docs/deploy.md describes."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry

from service.metrics import Metrics
from service.runtime.specs import PhaseSeconds, StepOutcome, TrainResult

PHASES = PhaseSeconds(queue=0.1, prepare=0.01, forward_backward=0.5, optimizer=0.02, sync=0.003, total=0.633)


def result(outcome: StepOutcome, loss: float = 2.0, grad_norm: float = 0.0) -> TrainResult:
    """A TrainResult with the fixed phase timings."""
    return TrainResult(outcome=outcome, loss=loss, grad_norm=grad_norm, tokens=7, step=1, adapter_version=1, accumulated_micro_batches=0, seconds=PHASES)


@pytest.fixture
def metrics() -> Metrics:
    """Metrics on a registry of their own."""
    return Metrics(CollectorRegistry())


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    """One sample's value, None when absent."""
    return metrics.registry.get_sample_value(name, labels)


def phase_count(metrics: Metrics, phase: str) -> float | None:
    """Observations of one TrainStep phase."""
    return sample(metrics, "tandem_train_step_phase_seconds_count", phase=phase)


def test_every_outcome_and_phase_series_exists_before_the_first_step(metrics: Metrics) -> None:
    for outcome in StepOutcome:
        assert sample(metrics, "tandem_train_steps_total", outcome=outcome.value) == 0
    for phase in ("queue", "prepare", "forward_backward", "optimizer", "sync"):
        assert phase_count(metrics, phase) == 0


def test_applied_step_records_every_phase_loss_and_gradient_norm(metrics: Metrics) -> None:
    metrics.record_train_result(result(StepOutcome.APPLIED, loss=1.25, grad_norm=0.5))
    assert sample(metrics, "tandem_train_step_phase_seconds_sum", phase="forward_backward") == pytest.approx(0.5)
    assert sample(metrics, "tandem_train_step_phase_seconds_sum", phase="sync") == pytest.approx(0.003)
    assert sample(metrics, "tandem_train_loss") == 1.25
    assert sample(metrics, "tandem_train_grad_norm") == 0.5


def test_accumulated_step_leaves_optimizer_phases_and_gradient_norm_alone(metrics: Metrics) -> None:
    metrics.record_train_result(result(StepOutcome.APPLIED, grad_norm=0.5))
    metrics.record_train_result(result(StepOutcome.ACCUMULATED, loss=3.0))
    assert phase_count(metrics, "forward_backward") == 2
    assert phase_count(metrics, "optimizer") == 1 and phase_count(metrics, "sync") == 1
    assert sample(metrics, "tandem_train_loss") == 3.0
    assert sample(metrics, "tandem_train_grad_norm") == 0.5


def test_non_finite_loss_keeps_the_last_finite_one(metrics: Metrics) -> None:
    metrics.record_train_result(result(StepOutcome.APPLIED, loss=1.5, grad_norm=0.5))
    metrics.record_train_result(result(StepOutcome.SKIPPED_NONFINITE, loss=math.nan))
    assert sample(metrics, "tandem_train_loss") == 1.5
    assert phase_count(metrics, "optimizer") == 1
