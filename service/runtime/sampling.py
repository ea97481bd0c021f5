"""Choosing the next token of one sample: temperature, top-k, top-p, min-p, seeded draws.

Used by the transformers engine (vLLM has its own sampler with the same
semantics). Pure tensor functions over one row of logits.
"""

from __future__ import annotations

import torch

from service.runtime.specs import SamplingSpec, TokenLogprob, TopLogprob


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float, min_p: float) -> torch.Tensor:
    """Set to -inf every token outside top-k, outside the top-p nucleus, or below min_p x the top probability."""
    logits = logits.clone()
    if 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits[logits < kth] = -float("inf")
    if min_p > 0.0:
        probs = torch.softmax(logits, dim=-1)
        logits[probs < min_p * probs.max()] = -float("inf")
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already reach top_p; the top token always stays.
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= top_p
        logits[order[drop_sorted]] = -float("inf")
    return logits


def choose_token(logits: torch.Tensor, params: SamplingSpec, generator: torch.Generator) -> int:
    """Greedy at temperature 0, else a seeded draw from the filtered, tempered distribution."""
    if params.temperature == 0.0:
        return int(torch.argmax(logits))
    scaled = filter_logits(logits.float() / params.temperature, params.top_k, params.top_p, params.min_p)
    probs = torch.softmax(scaled, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def token_logprob(raw_logprobs: torch.Tensor, token_id: int, top: int) -> TokenLogprob:
    """The chosen token's logprob under the unmodified model distribution, with the ``top`` best alternatives."""
    alternatives: tuple[TopLogprob, ...] = ()
    if top > 0:
        values, ids = torch.topk(raw_logprobs, top)
        alternatives = tuple(TopLogprob(int(i), float(v)) for i, v in zip(ids.tolist(), values.tolist()))
    return TokenLogprob(token_id=token_id, logprob=float(raw_logprobs[token_id]), top=alternatives)
