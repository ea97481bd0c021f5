"""Token choice: filters and seeded draws."""

import math

import pytest
import torch

from service.runtime.sampling import choose_token, filter_logits, token_logprob
from service.runtime.specs import SamplingSpec

LOGITS = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.1]))


def kept(logits: torch.Tensor) -> list[int]:
    return [i for i, v in enumerate(logits.tolist()) if v != -math.inf]


def test_top_k_keeps_the_k_best():
    assert kept(filter_logits(LOGITS, top_k=2, top_p=1.0, min_p=0.0)) == [0, 1]


def test_top_p_keeps_the_smallest_set_reaching_p():
    assert kept(filter_logits(LOGITS, top_k=0, top_p=0.7, min_p=0.0)) == [0, 1]
    assert kept(filter_logits(LOGITS, top_k=0, top_p=0.75, min_p=0.0)) == [0, 1]
    assert kept(filter_logits(LOGITS, top_k=0, top_p=0.76, min_p=0.0)) == [0, 1, 2]
    assert kept(filter_logits(LOGITS, top_k=0, top_p=0.01, min_p=0.0)) == [0]


def test_min_p_drops_tokens_below_a_fraction_of_the_best():
    assert kept(filter_logits(LOGITS, top_k=0, top_p=1.0, min_p=0.3)) == [0, 1, 2]
    assert kept(filter_logits(LOGITS, top_k=0, top_p=1.0, min_p=0.5)) == [0, 1]


def test_temperature_zero_is_greedy():
    assert choose_token(torch.tensor([0.1, 3.0, 2.9]), SamplingSpec(temperature=0.0), torch.Generator().manual_seed(1)) == 1


def test_same_seed_same_tokens_and_different_seeds_differ():
    params = SamplingSpec(temperature=1.0)
    flat = torch.zeros(64)

    def draws(seed: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed)
        return [choose_token(flat, params, generator) for _ in range(20)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


def test_draws_follow_the_filtered_distribution():
    generator = torch.Generator().manual_seed(0)
    picks = [choose_token(LOGITS, SamplingSpec(top_k=2), generator) for _ in range(3000)]
    assert set(picks) == {0, 1}
    assert picks.count(0) / len(picks) == pytest.approx(2 / 3, abs=0.04)


def test_token_logprob_reports_the_raw_distribution_and_top_alternatives():
    raw = torch.log_softmax(LOGITS, dim=-1)
    lp = token_logprob(raw, token_id=2, top=2)
    assert lp.logprob == pytest.approx(math.log(0.15))
    assert [t.token_id for t in lp.top] == [0, 1]
    assert lp.top[0].logprob == pytest.approx(math.log(0.5))
