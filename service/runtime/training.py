"""TrainStep on the device thread: batch, loss, gradient accumulation, guarded AdamW step.

A step is all-or-nothing. Gradients are computed with ``torch.autograd.grad``
into fresh tensors and only added to the accumulation buffer once they are
known finite; the optimizer steps only on a finite mean gradient. Out of
memory leaves everything as it was and surfaces as RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from service.errors import ResourceExhausted
from service.runtime.losses import LossInputs, compute_loss, token_logprobs
from service.runtime.model import LoadedModel
from service.runtime.specs import BASE_ADAPTER, LossSpec, OptimizerSpec, PhaseSeconds, StepOutcome, TrainResult
from service.runtime.validation import PreparedSequence


def collate(sequences: list[PreparedSequence], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-pad to one [B, T] batch; per-token arrays are shifted to align with targets (positions 1..T-1)."""
    width = max(len(s.token_ids) for s in sequences)
    batch = len(sequences)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    attention = torch.zeros((batch, width), dtype=torch.long)
    weights = torch.zeros((batch, width - 1))
    advantages = torch.zeros((batch, width - 1))
    sampler = torch.zeros((batch, width - 1))
    has_sampler = torch.zeros((batch, 1), dtype=torch.bool)
    for i, seq in enumerate(sequences):
        n = len(seq.token_ids)
        input_ids[i, :n] = torch.tensor(seq.token_ids)
        attention[i, :n] = 1
        weights[i, : n - 1] = torch.tensor(seq.weights[1:])
        advantages[i, : n - 1] = torch.tensor(seq.advantages[1:])
        if seq.sampler_logprobs is not None:
            sampler[i, : n - 1] = torch.tensor(seq.sampler_logprobs[1:])
            has_sampler[i] = True
    tensors = dict(input_ids=input_ids, attention_mask=attention, weights=weights, advantages=advantages, sampler_logprobs=sampler, has_sampler=has_sampler)
    return {k: v.to(device) for k, v in tensors.items()}


def sequence_logprobs(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, adapter_names: list[str] | None = None
) -> torch.Tensor:
    """Logprob of each token given those before it: [B, T-1] (float32). ``adapter_names``: PEFT's per-row adapters (eval only)."""
    extra = {} if adapter_names is None else {"adapter_names": adapter_names}
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra).logits
    return token_logprobs(logits[:, :-1, :], input_ids[:, 1:])


def _grads_finite(grads: list[torch.Tensor]) -> bool:
    """One fused norm and one device sync, instead of a check (and a sync) per tensor."""
    return bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))


def _configure_optimizer(optimizer: torch.optim.AdamW, spec: OptimizerSpec) -> None:
    for group in optimizer.param_groups:
        group.update(lr=spec.learning_rate, betas=(spec.beta1, spec.beta2), eps=spec.eps, weight_decay=spec.weight_decay)


def _backward(loaded: LoadedModel, batch: dict[str, torch.Tensor], loss_spec: LossSpec):
    loaded.model.train()
    logprobs = sequence_logprobs(loaded.model, batch["input_ids"], batch["attention_mask"])
    # Without sampler logprobs a policy loss is on-policy: the ratio is 1 and its gradient is A * grad(logp).
    sampler = torch.where(batch["has_sampler"], batch["sampler_logprobs"], logprobs.detach())
    output = compute_loss(LossInputs(logprobs, batch["weights"], batch["advantages"], sampler), loss_spec)
    if not torch.isfinite(output.loss):
        return output, None
    grads = torch.autograd.grad(output.loss, loaded.trainable, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(loaded.trainable, grads)]
    return output, grads


def _apply_step(loaded: LoadedModel, spec: OptimizerSpec) -> float | None:
    """Mean accumulated gradient -> clip -> AdamW. Returns the pre-clip norm, or None if non-finite (nothing changed)."""
    state = loaded.state
    for param, grad in zip(loaded.trainable, state.accumulated):
        param.grad = grad / state.micro_batches
    max_norm = spec.max_grad_norm if spec.max_grad_norm > 0 else math.inf
    norm = float(torch.nn.utils.clip_grad_norm_(loaded.trainable, max_norm))
    if not math.isfinite(norm):
        for param in loaded.trainable:
            param.grad = None
        return None
    _configure_optimizer(loaded.optimizer, spec)
    loaded.optimizer.step()
    loaded.optimizer.zero_grad(set_to_none=True)
    return norm


def train_step(
    loaded: LoadedModel,
    sequences: list[PreparedSequence],
    loss_spec: LossSpec,
    optimizer_spec: OptimizerSpec,
    accumulate: bool,
    queued_at: float,
    on_applied: Callable[[LoadedModel], float],
) -> TrainResult:
    """Run one TrainStep; ``on_applied`` brings a new adapter to the engine and returns seconds spent."""
    started = time.perf_counter()
    state = loaded.state
    batch = collate(sequences, pad_id=loaded.eos_token_ids[0], device=loaded.device)
    tokens = int((batch["weights"] > 0).sum())
    prepared = time.perf_counter()
    try:
        output, grads = _backward(loaded, batch, loss_spec)
    except torch.OutOfMemoryError:
        _release_cached_memory()
        raise ResourceExhausted("out of accelerator memory in TrainStep: send fewer or shorter sequences per step") from None
    finally:
        loaded.model.eval()
    backward_done = time.perf_counter()

    def result(outcome: StepOutcome, grad_norm: float = 0.0, optimizer_s: float = 0.0, sync_s: float = 0.0) -> TrainResult:
        now = time.perf_counter()
        return TrainResult(
            outcome=outcome,
            loss=float(output.loss.detach()),
            grad_norm=grad_norm,
            tokens=tokens,
            step=state.step,
            adapter_version=state.adapter_version,
            accumulated_micro_batches=state.micro_batches,
            seconds=PhaseSeconds(
                queue=started - queued_at,
                prepare=prepared - started,
                forward_backward=backward_done - prepared,
                optimizer=optimizer_s,
                sync=sync_s,
                total=now - started,
            ),
            clip_fraction=output.clip_fraction,
            importance_ratio_mean=output.importance_ratio_mean,
        )

    if grads is None or not _grads_finite(grads):
        return result(StepOutcome.SKIPPED_NONFINITE)
    if state.accumulated is None:
        state.accumulated = list(grads)  # fresh tensors from autograd.grad: nothing else holds them
    else:
        for total, grad in zip(state.accumulated, grads):
            total.add_(grad)
    state.micro_batches += 1
    if accumulate:
        return result(StepOutcome.ACCUMULATED)

    optimizer_started = time.perf_counter()
    norm = _apply_step(loaded, optimizer_spec)
    if norm is None:
        _undo_last_micro_batch(state, grads)
        return result(StepOutcome.SKIPPED_NONFINITE)
    state.accumulated, state.micro_batches = None, 0
    state.step += 1
    state.adapter_version += 1
    optimizer_s = time.perf_counter() - optimizer_started
    sync_s = on_applied(loaded)
    return result(StepOutcome.APPLIED, grad_norm=norm, optimizer_s=optimizer_s, sync_s=sync_s)


def _undo_last_micro_batch(state, grads: list[torch.Tensor]) -> None:
    """Take this call's gradient back out, so a skipped step leaves the accumulation as it was."""
    state.micro_batches -= 1
    if state.micro_batches == 0:
        state.accumulated = None
    else:
        for total, grad in zip(state.accumulated, grads):
            total.sub_(grad)


def _release_cached_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@torch.inference_mode()
def score_sequences(loaded: LoadedModel, sequences: list[list[int]], adapter: str) -> list[list[float]]:
    """Per-token logprobs (entry 0 is 0) under ``adapter``: "" (trained), "base", or the PEFT name of a loaded saved adapter."""
    results = []
    for ids in sequences:  # one at a time: no padding effects, and memory bounded by one sequence
        if len(ids) == 1:
            results.append([0.0])
            continue
        input_ids = torch.tensor([ids], device=loaded.device)
        mask = torch.ones_like(input_ids)
        if adapter == BASE_ADAPTER:
            with loaded.model.disable_adapter():
                logprobs = sequence_logprobs(loaded.model, input_ids, mask)
        else:
            logprobs = sequence_logprobs(loaded.model, input_ids, mask, [adapter] if adapter else None)
        results.append([0.0, *logprobs[0].tolist()])
    return results
