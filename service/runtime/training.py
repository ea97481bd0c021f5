"""TrainStep on the device thread: batch, loss, gradient accumulation, guarded AdamW step.

A step is all-or-nothing: whatever fails in any stage (prepare, forward,
backward, accumulate, optimizer, adapter sync), the adapter weights, AdamW
moments and step counts, accumulated gradient, micro-batch count, step,
adapter version and random number state are exactly as before the call, so a
resend gives the same adapter, bit for bit, as one clean step. Out of memory
anywhere is RESOURCE_EXHAUSTED naming the stage and what to send instead.

How, without a second copy of adapter + optimizer on the device:

- Up to the optimizer nothing is changed in place. The micro-batch's gradient
  comes from ``torch.autograd.grad`` in fresh tensors, the accumulation so far
  is added *into those* (the buffer in the training state is only read), and
  the sum becomes the state's buffer by assignment once everything fallible
  has run. So accumulation needs no undo (and a skipped step no subtraction,
  which would not give back the same bits).
- AdamW changes weights and moments in place and allocates as it goes, so it
  can fail half-way. On a call that may step (not ``accumulate``), the
  trainable weights and optimizer state are copied to pinned host memory at
  the start, on a side stream, so the copy runs beside the forward and
  backward passes (which only read those tensors) and AdamW waits for it; a
  failure there or in the adapter sync copies them back. The device holds
  nothing extra. The pinned buffers are kept from step to step (as much host
  memory as adapter + moments) and filled by one foreach call: the H200 train
  profile (tests/bench/results/2026-12-03-train-profile-nvidia-h200.json)
  showed a step bound by host time, not the GPU (device busy 149 of 278 ms),
  with 1,238 separate copies for the snapshot. The foreach call still makes
  one device-to-host copy per tensor (the second profile: 1,238, 13.6 ms of
  copy-engine time beside the passes), but no Python-level work per tensor
  or pinned allocation per step; that profile put the whole TrainStep path
  at 242 ms against 217 ms for a bare forward + backward. Measured with fp32 tensors
  shaped like the 1.1B model's rank-64 adapter (0.17 GB) and its AdamW moments
  (0.33 GB) on one H200, a copy taken right before the optimizer made an
  applied step 17 ms instead of 3.5 ms; overlapped with the passes it is
  hidden behind them. On CPU the copy
  is synchronous: the tiny model's takes 0.7 ms of a 111 ms step. A copy kept
  on the device would take 0.5 GB, twice the 0.25 GiB the budget allows over
  vLLM.
- Counters, optimizer hyperparameters, ``.grad`` references and RNG state
  (LoRA dropout) are kept by reference or as small values and put back on any
  failure; after a failed sync the restored weights are synced again, so the
  engine samples what the version number says.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.weak import WeakIdKeyDictionary

from service.errors import ResourceExhausted
from service.runtime.losses import LossInputs, LossOutput, compute_loss, token_logprobs
from service.runtime.model import LoadedModel
from service.runtime.specs import BASE_ADAPTER, LossSpec, OptimizerSpec, PhaseSeconds, StepOutcome, TrainResult
from service.runtime.validation import PreparedSequence

log = logging.getLogger(__name__)
SyncAdapter = Callable[[LoadedModel], float]
"""Brings the trained adapter's current weights to the engine; returns seconds spent."""


def collate(sequences: list[PreparedSequence], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-pad to one [B, T] batch; per-token arrays are shifted to align with targets (positions 1..T-1)."""
    width = max(len(s.token_ids) for s in sequences)
    batch = len(sequences)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    weights = torch.zeros((batch, width - 1))
    advantages = torch.zeros((batch, width - 1))
    sampler = torch.zeros((batch, width - 1))
    has_sampler = torch.zeros((batch, 1), dtype=torch.bool)
    for i, seq in enumerate(sequences):
        n = len(seq.token_ids)
        input_ids[i, :n] = torch.tensor(seq.token_ids)
        weights[i, : n - 1] = torch.tensor(seq.weights[1:])
        advantages[i, : n - 1] = torch.tensor(seq.advantages[1:])
        if seq.sampler_logprobs is not None:
            sampler[i, : n - 1] = torch.tensor(seq.sampler_logprobs[1:])
            has_sampler[i] = True
    tensors = dict(input_ids=input_ids, weights=weights, advantages=advantages, sampler_logprobs=sampler, has_sampler=has_sampler)
    return {k: v.to(device) for k, v in tensors.items()}


def sequence_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, adapter_names: list[str] | None = None) -> torch.Tensor:
    """Logprob of each token given those before it: [B, T-1] (float32). ``adapter_names``: PEFT's per-row adapters (eval only).

    Batches are right-padded, so no attention mask is passed: with causal attention a real token never
    sees the padding after it, positions count from 0 either way, and padding carries no loss weight.
    Without a mask, attention takes its fused causal kernel (SDPA with a mask cannot).
    """
    extra = {} if adapter_names is None else {"adapter_names": adapter_names}
    logits = model(input_ids=input_ids, use_cache=False, **extra).logits
    return token_logprobs(logits[:, :-1, :], input_ids[:, 1:])


def _finite_norm(grads: list[torch.Tensor]) -> torch.Tensor | None:
    """The gradients' total L2 norm (a device tensor), or None when it is not finite: one fused norm and one
    device sync, instead of a check (and a sync) per tensor. Without accumulation it is also the norm the
    optimizer step clips by."""
    norm = torch.nn.utils.get_total_norm(grads)
    return norm if bool(torch.isfinite(norm)) else None


def _configure_optimizer(optimizer: torch.optim.AdamW, spec: OptimizerSpec) -> None:
    for group in optimizer.param_groups:
        group.update(lr=spec.learning_rate, betas=(spec.beta1, spec.beta2), eps=spec.eps, weight_decay=spec.weight_decay)


def _backward(loaded: LoadedModel, batch: dict[str, torch.Tensor], loss_spec: LossSpec) -> tuple[LossOutput, list[torch.Tensor] | None]:
    """Loss and its gradient in fresh tensors (None when the loss is not finite); nothing in the model or optimizer changes."""
    loaded.model.train()
    try:
        logprobs = sequence_logprobs(loaded.model, batch["input_ids"])
        # Without sampler logprobs a policy loss is on-policy: the ratio is 1 and its gradient is A * grad(logp).
        sampler = torch.where(batch["has_sampler"], batch["sampler_logprobs"], logprobs.detach())
        output = compute_loss(LossInputs(logprobs, batch["weights"], batch["advantages"], sampler), loss_spec)
        if not torch.isfinite(output.loss):
            return output, None
        grads = torch.autograd.grad(output.loss, loaded.trainable, allow_unused=True)
    finally:
        loaded.model.eval()
    return output, [torch.zeros_like(p) if g is None else g for p, g in zip(loaded.trainable, grads)]


def _add_accumulated(grads: list[torch.Tensor], accumulated: list[torch.Tensor] | None) -> list[torch.Tensor]:
    """This micro-batch's gradient plus those accumulated before, summed into ``grads`` (``accumulated`` is only read)."""
    if accumulated is not None:
        for grad, total in zip(grads, accumulated):
            grad.add_(total)
    return grads


def _apply_step(
    loaded: LoadedModel, summed: list[torch.Tensor], micro_batches: int, spec: OptimizerSpec, rollback: _Rollback, norm: torch.Tensor | None
) -> float | None:
    """Mean gradient -> clip -> AdamW. Returns the pre-clip norm, or None if non-finite (then nothing changed).

    ``summed`` is scratch (divided in place). ``norm`` is its total norm when already known (a step of one
    micro-batch: ``_finite_norm`` measured it), else None. The host copy was started before the forward pass
    (``train_step``); AdamW waits for it here.
    """
    if micro_batches > 1:
        torch._foreach_div_(summed, micro_batches)
        norm = None
    for param, grad in zip(loaded.trainable, summed):
        param.grad = grad
    if norm is None:
        norm = torch.nn.utils.get_total_norm(summed)
    max_norm = spec.max_grad_norm if spec.max_grad_norm > 0 else math.inf
    torch.nn.utils.clip_grads_with_norm_(loaded.trainable, max_norm, norm)
    norm = float(norm)
    if not math.isfinite(norm):
        loaded.optimizer.zero_grad(set_to_none=True)
        return None
    rollback.optimizer.ready(loaded.device)
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
    on_applied: SyncAdapter,
) -> TrainResult:
    """Run one TrainStep, all or nothing; ``on_applied`` brings a new adapter to the engine and returns seconds spent."""
    # Stages: ``rollback.stage`` names the one running. State changes only by assignment after all fallible
    # work, except what ``rollback`` holds a copy of; leaving the block by an exception puts everything back.
    with _Rollback.begin(loaded, on_applied) as rollback:
        started = time.perf_counter()
        state = loaded.state
        batch = collate(sequences, pad_id=loaded.eos_token_ids[0], device=loaded.device)
        tokens = int((batch["weights"] > 0).sum())
        prepared = time.perf_counter()
        if not accumulate:  # this call may step the optimizer: copy what it changes, beside the passes
            rollback.optimizer = _OptimizerSnapshot.take(loaded)
        rollback.stage = "forward and backward"
        output, grads = _backward(loaded, batch, loss_spec)
        loss = float(output.loss.detach())
        backward_done = time.perf_counter()

        def result(outcome: StepOutcome, grad_norm: float = 0.0, optimizer_s: float = 0.0, sync_s: float = 0.0) -> TrainResult:
            now = time.perf_counter()
            return TrainResult(
                outcome=outcome,
                loss=loss,
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

        norm = None if grads is None else _finite_norm(grads)
        if norm is None:
            return result(StepOutcome.SKIPPED_NONFINITE)
        rollback.stage = "gradient accumulation"
        summed = _add_accumulated(grads, state.accumulated)
        micro_batches = state.micro_batches + 1
        if accumulate:
            state.accumulated, state.micro_batches = summed, micro_batches
            return result(StepOutcome.ACCUMULATED)

        rollback.stage = "optimizer step"
        optimizer_started = time.perf_counter()
        applied_norm = _apply_step(loaded, summed, micro_batches, optimizer_spec, rollback, norm)
        if applied_norm is None:
            return result(StepOutcome.SKIPPED_NONFINITE)
        state.accumulated, state.micro_batches = None, 0
        state.step += 1
        state.adapter_version += 1
        optimizer_s = time.perf_counter() - optimizer_started
        rollback.stage = "adapter sync"
        rollback.synced = True
        sync_s = on_applied(loaded)
        return result(StepOutcome.APPLIED, grad_norm=applied_norm, optimizer_s=optimizer_s, sync_s=sync_s)


_HOST_MIRRORS = WeakIdKeyDictionary()
"""Device tensor -> its host buffer for snapshots, reused step after step: a snapshot is done with once the
next step starts (copies on the side stream stay in order; the host reads them only after a synchronize)."""


def _host_mirror(tensor: torch.Tensor) -> torch.Tensor:
    """The host buffer ``tensor`` is copied into (pinned when it lives on an accelerator), made on first use."""
    mirror = _HOST_MIRRORS.get(tensor)
    if mirror is None or mirror.shape != tensor.shape or mirror.dtype != tensor.dtype:
        mirror = torch.empty_like(tensor, device="cpu", pin_memory=tensor.device.type != "cpu")
        _HOST_MIRRORS[tensor] = mirror
    return mirror


_COPY_STREAMS: dict[torch.device, torch.cuda.Stream] = {}
"""One side stream per device for the snapshot's device-to-host copies."""


def _copy_stream(device: torch.device) -> torch.cuda.Stream | None:
    if device.type != "cuda":
        return None
    if device not in _COPY_STREAMS:
        _COPY_STREAMS[device] = torch.cuda.Stream(device)
    return _COPY_STREAMS[device]


@dataclass
class _OptimizerSnapshot:
    """The trainable weights and AdamW state in host memory, with the tensors they are copies of."""

    weights: list[tuple[torch.Tensor, torch.Tensor]]
    """(parameter, host copy)."""
    states: dict[torch.Tensor, dict[str, Any]]
    """parameter -> its optimizer state as it was: tensors as (the state's tensor, host copy); absent: it had none."""
    stream: torch.cuda.Stream | None
    """The side stream the copies run on (None on a CPU)."""

    @classmethod
    def take(cls, loaded: LoadedModel) -> _OptimizerSnapshot:
        """Copy what ``optimizer.step()`` changes. On a GPU the copies run on a side stream, beside the forward
        and backward passes that come next (they only read these tensors): the step waits for them in ``ready``.
        All copies go in one foreach call into pinned buffers kept from the last step (``_host_mirror``): a
        rank-64 1.1B adapter with its AdamW state is about 1,200 tensors, and a Python-level copy and pinned
        allocation of each cost more host time per step than the copies themselves."""
        stream = _copy_stream(loaded.device)
        sources: list[torch.Tensor] = []
        copies: list[torch.Tensor] = []

        def mirrored(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            copy = _host_mirror(tensor)
            sources.append(tensor)
            copies.append(copy)
            return tensor, copy

        optimizer_state = loaded.optimizer.state
        states = {
            param: {key: mirrored(value) if isinstance(value, torch.Tensor) else value for key, value in optimizer_state[param].items()}
            for param in loaded.trainable
            if param in optimizer_state
        }
        weights = [mirrored(param) for param in loaded.trainable]
        if stream is not None:
            stream.wait_stream(torch.cuda.current_stream(loaded.device))  # after the last step's writes
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext(), torch.no_grad():
            torch._foreach_copy_(copies, sources, non_blocking=stream is not None)
        return cls(weights, states, stream)

    def ready(self, device: torch.device) -> None:
        """Make the device's work from here on wait for the copies (before anything changes what they read)."""
        if self.stream is not None:
            torch.cuda.current_stream(device).wait_stream(self.stream)

    def put_back(self, loaded: LoadedModel) -> None:
        """Make weights and optimizer state bit-for-bit what they were when taken (into the same tensors)."""
        self.ready(loaded.device)
        if self.stream is not None:
            self.stream.synchronize()  # the host copies are complete before they are read back
        with torch.no_grad():
            for param, copy in self.weights:
                param.copy_(copy)
            optimizer_state = loaded.optimizer.state
            for param in loaded.trainable:
                if param not in self.states:
                    optimizer_state.pop(param, None)
                    continue
                restored = {}
                for key, value in self.states[param].items():
                    if isinstance(value, tuple):
                        tensor, copy = value
                        value = tensor.copy_(copy)
                    restored[key] = value
                optimizer_state[param] = restored


@dataclass
class _Rollback:
    """What a failed TrainStep puts back, as a context manager: leaving by an exception undoes the step
    (out of memory becomes ResourceExhausted). All of it is small except ``optimizer``, taken when the call may step."""

    loaded: LoadedModel
    sync: SyncAdapter
    counters: tuple[list[torch.Tensor] | None, int, int, int]
    """accumulated (the buffer itself: the step only replaces it), micro_batches, step, adapter_version."""
    grads: list[torch.Tensor | None]
    hyperparameters: list[dict[str, Any]]
    rng: tuple[torch.Tensor, torch.Tensor | None]
    stage: str = "prepare"
    optimizer: _OptimizerSnapshot | None = None
    synced: bool = False
    """The new weights may have reached the engine: sync the restored ones."""

    @classmethod
    def begin(cls, loaded: LoadedModel, sync: SyncAdapter) -> _Rollback:
        """Note the state a failure returns to."""
        state = loaded.state
        device = loaded.device
        cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return cls(
            loaded=loaded,
            sync=sync,
            counters=(state.accumulated, state.micro_batches, state.step, state.adapter_version),
            grads=[param.grad for param in loaded.trainable],
            hyperparameters=[{k: v for k, v in group.items() if k != "params"} for group in loaded.optimizer.param_groups],
            rng=(torch.get_rng_state(), cuda_rng),
        )

    def __enter__(self) -> _Rollback:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: Any) -> None:
        if error is None:
            return
        self.undo()
        if isinstance(error, torch.OutOfMemoryError):
            _release_cached_memory()
            raise ResourceExhausted(
                f"out of accelerator memory in TrainStep ({self.stage}); nothing was applied: send fewer or shorter sequences "
                "per call (accumulate=true spreads one optimizer step over several calls)"
            ) from None

    def undo(self) -> None:
        """Put everything back; after a failed sync, sync the restored adapter so the engine matches its version."""
        loaded, state = self.loaded, self.loaded.state
        if self.optimizer is not None:
            self.optimizer.put_back(loaded)
        state.accumulated, state.micro_batches, state.step, state.adapter_version = self.counters
        for param, grad in zip(loaded.trainable, self.grads):
            param.grad = grad
        for group, saved in zip(loaded.optimizer.param_groups, self.hyperparameters):
            group.update(saved)
        cpu_rng, cuda_rng = self.rng
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, loaded.device)
        if self.synced:
            try:
                self.sync(loaded)
            except Exception:  # the caller hears the step's own failure; this one is for the log
                log.exception("could not sync the restored adapter (version %d) back to the engine", state.adapter_version)


def _release_cached_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@torch.compiler.set_stance("force_eager")  # layers compiled for training (compiled_training.py) run eagerly here
@torch.inference_mode()
def score_sequences(loaded: LoadedModel, sequences: list[list[int]], adapter: str) -> list[list[float]]:
    """Per-token logprobs (entry 0 is 0) under ``adapter``: "" (trained), "base", or the PEFT name of a loaded saved adapter."""
    results = []
    for ids in sequences:  # one at a time: no padding effects, and memory bounded by one sequence
        if len(ids) == 1:
            results.append([0.0])
            continue
        input_ids = torch.tensor([ids], device=loaded.device)
        if adapter == BASE_ADAPTER:
            with loaded.model.disable_adapter():
                logprobs = sequence_logprobs(loaded.model, input_ids)
        else:
            logprobs = sequence_logprobs(loaded.model, input_ids, [adapter] if adapter else None)
        results.append([0.0, *logprobs[0].tolist()])
    return results
