"""Loss functions over per-token logprobs: pure functions of tensors.

All tensors are [batch, positions] aligned so that position t holds the
logprob of token t given tokens < t (the caller drops position 0). Every loss
is a weighted token mean: sum(w * per_token) / sum(w).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from service.runtime.specs import LossFunction, LossSpec


@dataclass(frozen=True)
class LossInputs:
    """What every loss sees; advantages and sampler_logprobs matter to policy losses only."""

    logprobs: torch.Tensor
    weights: torch.Tensor
    advantages: torch.Tensor
    sampler_logprobs: torch.Tensor


@dataclass(frozen=True)
class LossOutput:
    """The scalar loss plus diagnostics (floats, detached)."""

    loss: torch.Tensor
    clip_fraction: float = 0.0
    importance_ratio_mean: float = 1.0


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (values * weights).sum() / weights.sum().clamp_min(torch.finfo(values.dtype).tiny)


def cross_entropy(inputs: LossInputs, spec: LossSpec) -> LossOutput:
    """Weighted token negative log-likelihood (SFT)."""
    return LossOutput(loss=_weighted_mean(-inputs.logprobs, inputs.weights))


def _importance_ratio(inputs: LossInputs) -> torch.Tensor:
    return torch.exp(inputs.logprobs - inputs.sampler_logprobs)


def importance_sampling(inputs: LossInputs, spec: LossSpec) -> LossOutput:
    """Policy gradient corrected by the ratio of trainer to sampler probabilities."""
    ratio = _importance_ratio(inputs)
    loss = _weighted_mean(-ratio * inputs.advantages, inputs.weights)
    return LossOutput(loss=loss, importance_ratio_mean=float(_weighted_mean(ratio.detach(), inputs.weights)))


def ppo_clip(inputs: LossInputs, spec: LossSpec) -> LossOutput:
    """PPO's pessimistic clipped surrogate."""
    ratio = _importance_ratio(inputs)
    clipped_ratio = ratio.clamp(1.0 - spec.clip_low, 1.0 + spec.resolved_clip_high)
    surrogate = torch.minimum(ratio * inputs.advantages, clipped_ratio * inputs.advantages)
    was_clipped = (surrogate != ratio * inputs.advantages).to(inputs.weights.dtype)
    return LossOutput(
        loss=_weighted_mean(-surrogate, inputs.weights),
        clip_fraction=float(_weighted_mean(was_clipped, (inputs.weights > 0).to(inputs.weights.dtype))),
        importance_ratio_mean=float(_weighted_mean(ratio.detach(), inputs.weights)),
    )


LOSSES: dict[LossFunction, Callable[[LossInputs, LossSpec], LossOutput]] = {
    LossFunction.CROSS_ENTROPY: cross_entropy,
    LossFunction.IMPORTANCE_SAMPLING: importance_sampling,
    LossFunction.PPO_CLIP: ppo_clip,
}


def compute_loss(inputs: LossInputs, spec: LossSpec) -> LossOutput:
    """Dispatch to the loss named by ``spec``."""
    return LOSSES[spec.function](inputs, spec)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] per position, in float32, without a [B, T, V] log-softmax copy."""
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)
