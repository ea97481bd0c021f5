"""Each loss against values worked out by hand."""

import math

import pytest
import torch

from service.runtime.losses import LossInputs, compute_loss, token_logprobs
from service.runtime.specs import LossFunction, LossSpec


def inputs(logprobs, weights, advantages=(0.0, 0.0), sampler=None, grad=False) -> LossInputs:
    lp = torch.tensor([logprobs], dtype=torch.float32, requires_grad=grad)
    return LossInputs(
        logprobs=lp,
        weights=torch.tensor([weights], dtype=torch.float32),
        advantages=torch.tensor([advantages], dtype=torch.float32),
        sampler_logprobs=torch.tensor([sampler if sampler is not None else logprobs], dtype=torch.float32),
    )


def test_cross_entropy_is_the_weighted_token_mean_of_negative_logprobs():
    out = compute_loss(inputs([-1.0, -2.0], [1.0, 3.0]), LossSpec(LossFunction.CROSS_ENTROPY))
    assert out.loss.item() == pytest.approx((1 * 1 + 3 * 2) / 4)


def test_zero_weight_tokens_do_not_count():
    out = compute_loss(inputs([-1.0, -50.0], [1.0, 0.0]), LossSpec(LossFunction.CROSS_ENTROPY))
    assert out.loss.item() == pytest.approx(1.0)


def test_importance_sampling_weights_advantages_by_the_probability_ratio():
    # ratios exp(log .5 - log .25) = 2 and exp(log .25 - log .5) = 0.5
    x = inputs([math.log(0.5), math.log(0.25)], [1.0, 1.0], advantages=[1.0, -2.0], sampler=[math.log(0.25), math.log(0.5)], grad=True)
    out = compute_loss(x, LossSpec(LossFunction.IMPORTANCE_SAMPLING))
    assert out.loss.item() == pytest.approx(-(2 * 1 + 0.5 * -2) / 2)
    assert out.importance_ratio_mean == pytest.approx(1.25)
    out.loss.backward()
    # d/dlogp of -w * exp(logp - s) * A / sum(w) = -ratio * A / 2
    assert x.logprobs.grad[0].tolist() == pytest.approx([-1.0, 0.5])


def test_on_policy_importance_sampling_is_reinforce():
    x = inputs([-0.3, -1.2], [1.0, 1.0], advantages=[2.0, 2.0], grad=True)
    out = compute_loss(x, LossSpec(LossFunction.IMPORTANCE_SAMPLING))
    assert out.loss.item() == pytest.approx(-2.0)
    out.loss.backward()
    assert x.logprobs.grad[0].tolist() == pytest.approx([-1.0, -1.0])


def test_ppo_clips_ratios_outside_the_trust_region_and_stops_their_gradient():
    x = inputs([math.log(0.5), math.log(0.25)], [1.0, 1.0], advantages=[1.0, -2.0], sampler=[math.log(0.25), math.log(0.5)], grad=True)
    out = compute_loss(x, LossSpec(LossFunction.PPO_CLIP, clip_low=0.2))
    # token 1: min(2 * 1, 1.2 * 1) = 1.2; token 2: min(0.5 * -2, 0.8 * -2) = -1.6
    assert out.loss.item() == pytest.approx(-(1.2 - 1.6) / 2)
    assert out.clip_fraction == pytest.approx(1.0)
    out.loss.backward()
    assert x.logprobs.grad[0].tolist() == pytest.approx([0.0, 0.0])


def test_ppo_inside_the_region_equals_importance_sampling():
    x = inputs([math.log(0.55), math.log(0.45)], [1.0, 1.0], advantages=[1.0, 1.0], sampler=[math.log(0.5), math.log(0.5)])
    ppo = compute_loss(x, LossSpec(LossFunction.PPO_CLIP, clip_low=0.2))
    importance = compute_loss(x, LossSpec(LossFunction.IMPORTANCE_SAMPLING))
    assert ppo.loss.item() == pytest.approx(importance.loss.item()) == pytest.approx(-(1.1 + 0.9) / 2)
    assert ppo.clip_fraction == 0.0


def test_ppo_keeps_the_pessimistic_unclipped_term():
    # ratio 0.5 with A = +1: min(0.5, 0.8) = 0.5 (unclipped); ratio 2 with A = -1: min(-2, -1.2) = -2 (unclipped)
    x = inputs([math.log(0.25), math.log(0.5)], [1.0, 1.0], advantages=[1.0, -1.0], sampler=[math.log(0.5), math.log(0.25)])
    out = compute_loss(x, LossSpec(LossFunction.PPO_CLIP, clip_low=0.2))
    assert out.loss.item() == pytest.approx(-(0.5 - 2.0) / 2)
    assert out.clip_fraction == 0.0


def test_asymmetric_clip_high():
    x = inputs([math.log(0.8), math.log(0.5)], [1.0, 0.0], advantages=[1.0, 0.0], sampler=[math.log(0.5), math.log(0.5)])
    out = compute_loss(x, LossSpec(LossFunction.PPO_CLIP, clip_low=0.2, clip_high=0.28))
    assert out.loss.item() == pytest.approx(-1.28)


def test_token_logprobs_match_log_softmax():
    logits = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]])
    targets = torch.tensor([[2, 1]])
    expected = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    assert token_logprobs(logits, targets)[0].tolist() == pytest.approx(expected[0].tolist())
    assert token_logprobs(logits, targets)[0, 1].item() == pytest.approx(math.log(1 / 3))
