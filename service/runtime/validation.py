"""Request validation and preparation: turn domain specs into checked token lists.

Pure functions, run on the event loop before work reaches the device loop, so
a bad request fails at once with a message naming the field and what is
allowed, and never touches the model's state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from service.config import Limits
from service.errors import InvalidArgument
from service.runtime.specs import (
    BASE_ADAPTER,
    GenerateSpec,
    LossFunction,
    LossSpec,
    OptimizerSpec,
    SamplingSpec,
    TrainSequenceSpec,
    TrainSpec,
)


EMPTY_PROMPT = (
    "the prompt is empty (no text, no token ids): to start from nothing, send the beginning-of-sequence id "
    "(GetModel: special_tokens.bos_token_id) as token_ids"
)
"""The one message for an empty prompt, in Generate and ComputeLogprobs alike (see Prompt in the proto)."""


class TextEncoder(Protocol):
    """The part of a tokenizer that validation needs."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...


@dataclass(frozen=True)
class ModelBounds:
    """Facts about the loaded model that bound a request."""

    vocab_size: int
    max_seq_length: int
    eos_token_id: int


@dataclass(frozen=True)
class PreparedSequence:
    """A training sequence as aligned per-token lists (entry 0 ignored)."""

    token_ids: list[int]
    weights: list[float]
    advantages: list[float]
    sampler_logprobs: list[float] | None


def _check_range(field: str, value: float, low: float, high: float, *, low_open: bool = False, limit: str = "") -> None:
    """``limit``: the server limit that sets ``high``, named in the message so the client knows what bounds it."""
    inside = math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
    if not inside:
        bracket = "(" if low_open else "["
        bound = f" (the server's {limit})" if limit else ""
        raise InvalidArgument(field, f"must be in {bracket}{low:g}, {high:g}]{bound}, got {value!r}")


def check_token_ids(field: str, ids: Sequence[int], bounds: ModelBounds) -> None:
    """Every id must be a token of the model's vocabulary; the first that is not is named with its position.

    ``min`` and ``max`` run in C, so a valid prompt or training sequence (the usual case) costs no
    Python loop over its ids: 256 prompts of 128 ids per call add up on the event loop."""
    if not ids or (min(ids) >= 0 and max(ids) < bounds.vocab_size):
        return
    position, token = next((p, t) for p, t in enumerate(ids) if not 0 <= t < bounds.vocab_size)
    raise InvalidArgument(f"{field}[{position}]", f"token id {token} is outside the vocabulary [0, {bounds.vocab_size})")


def check_adapter_selector(field: str, adapter: str) -> None:
    """"" = trained adapter, "base" = none, anything else must be a valid checkpoint name."""
    if adapter not in ("", BASE_ADAPTER):
        check_checkpoint_name(field, adapter)


def check_checkpoint_name(field: str, name: str) -> None:
    """Checkpoint names are 1-64 of letters, digits, '.', '_', '-', not starting with '.', not "base"."""
    allowed = all(c.isascii() and (c.isalnum() or c in "._-") for c in name)
    if not (1 <= len(name) <= 64 and allowed and not name.startswith(".")):
        raise InvalidArgument(
            field, f"{name!r} is not a checkpoint name: use 1-64 letters, digits, '.', '_' or '-', not starting with '.'"
        )
    if name == BASE_ADAPTER:
        raise InvalidArgument(field, f"{BASE_ADAPTER!r} is reserved for the base model")


def check_sampling(sampling: SamplingSpec, limits: Limits) -> None:
    """Sampling parameters within their documented ranges and the server's limits."""
    _check_range("sampling.n", sampling.n, 1, limits.max_samples_per_prompt, limit="max_samples_per_prompt")
    _check_range("sampling.temperature", sampling.temperature, 0.0, 100.0)
    _check_range("sampling.top_p", sampling.top_p, 0.0, 1.0, low_open=True)
    _check_range("sampling.min_p", sampling.min_p, 0.0, 1.0)
    _check_range("sampling.max_tokens", sampling.max_tokens, 1, limits.max_new_tokens, limit="max_new_tokens")
    if sampling.logprobs is not None:
        _check_range("sampling.logprobs", sampling.logprobs, 0, limits.max_top_logprobs, limit="max_top_logprobs")
    if len(sampling.stop) > limits.max_stop_strings:
        raise InvalidArgument("sampling.stop", f"at most {limits.max_stop_strings} stop strings (max_stop_strings), got {len(sampling.stop)}")
    if any(not s for s in sampling.stop):
        raise InvalidArgument("sampling.stop", "stop strings must not be empty")


def prepare_prompts(spec: GenerateSpec, encoder: TextEncoder, bounds: ModelBounds, limits: Limits) -> list[list[int]]:
    """Check a Generate request and return each prompt's token ids."""
    if not spec.prompts:
        raise InvalidArgument("prompts", "give at least one prompt")
    if len(spec.prompts) > limits.max_prompts_per_request:
        raise InvalidArgument(
            "prompts", f"at most {limits.max_prompts_per_request} prompts per request (max_prompts_per_request), got {len(spec.prompts)}"
        )
    check_sampling(spec.sampling, limits)
    check_adapter_selector("adapter", spec.adapter)
    check_token_ids("sampling.stop_token_ids", spec.sampling.stop_token_ids, bounds)
    prepared = []
    for index, prompt in enumerate(spec.prompts):
        field = f"prompts[{index}]"
        if prompt.token_ids is not None:
            ids = list(prompt.token_ids)
            check_token_ids(f"{field}.token_ids.ids", ids, bounds)
        elif prompt.text is not None:
            ids = encoder.encode(prompt.text, add_special_tokens=True) if prompt.text else []
        else:
            raise InvalidArgument(field, "set text or token_ids")
        if not ids:
            raise InvalidArgument(field, EMPTY_PROMPT)
        room = bounds.max_seq_length - len(ids)
        if room < spec.sampling.max_tokens:
            raise InvalidArgument(
                field,
                f"{len(ids)} prompt tokens + max_tokens {spec.sampling.max_tokens} exceed max_seq_length "
                f"{bounds.max_seq_length}: shorten the prompt or lower max_tokens",
            )
        prepared.append(ids)
    return prepared


def check_loss(loss: LossSpec) -> None:
    """PPO clip ranges are in [0, 1] (low) and [0, 10] (high)."""
    if loss.function is LossFunction.PPO_CLIP:
        _check_range("loss.clip_low", loss.clip_low, 0.0, 1.0)
        _check_range("loss.clip_high", loss.resolved_clip_high, 0.0, 10.0)


def check_optimizer(optimizer: OptimizerSpec) -> None:
    """AdamW parameters in their valid ranges."""
    _check_range("optimizer.learning_rate", optimizer.learning_rate, 0.0, 10.0)
    _check_range("optimizer.beta1", optimizer.beta1, 0.0, 0.999999)
    _check_range("optimizer.beta2", optimizer.beta2, 0.0, 0.999999)
    _check_range("optimizer.eps", optimizer.eps, 0.0, 1.0, low_open=True)
    _check_range("optimizer.weight_decay", optimizer.weight_decay, 0.0, 10.0)
    _check_range("optimizer.max_grad_norm", optimizer.max_grad_norm, 0.0, 1e6)


def _per_token(field: str, values: Sequence[float], length: int, *, default: float, low: float = -math.inf, high: float = math.inf) -> list[float]:
    if not values:
        return [default] * length
    if len(values) != length:
        raise InvalidArgument(field, f"has {len(values)} entries but the sequence has {length} tokens: give one per token")
    for position, value in enumerate(values):
        if not (math.isfinite(value) and low <= value <= high):
            raise InvalidArgument(f"{field}[{position}]", f"must be finite and in [{low:g}, {high:g}], got {value!r}")
    return list(values)


def _sequence_tokens(field: str, seq: TrainSequenceSpec, encoder: TextEncoder, bounds: ModelBounds) -> tuple[list[int], list[float]]:
    """Token ids and default weights for either form of a sequence."""
    if not seq.is_text:
        if seq.prompt or seq.completion:
            raise InvalidArgument(field, "give token_ids or prompt/completion text, not both")
        ids = list(seq.token_ids)
        check_token_ids(f"{field}.token_ids", ids, bounds)
        return ids, [1.0] * len(ids)
    if not seq.completion:
        raise InvalidArgument(f"{field}.completion", "give token_ids, or a non-empty completion text")
    prompt = encoder.encode(seq.prompt, add_special_tokens=True) if seq.prompt else []
    completion = encoder.encode(seq.completion, add_special_tokens=False)
    if seq.add_eos:
        completion.append(bounds.eos_token_id)
    return prompt + completion, [0.0] * len(prompt) + [1.0] * len(completion)


def check_logprob_request_size(sequences: Sequence[Sequence[int]], limits: Limits) -> None:
    """ComputeLogprobs runs the same forward pass as TrainStep, so the TrainStep size limits bound it;
    an empty sequence is refused as an empty Generate prompt is."""
    if not sequences:
        raise InvalidArgument("sequences", "give at least one sequence")
    for index, ids in enumerate(sequences):
        if not ids:
            raise InvalidArgument(f"sequences[{index}].ids", EMPTY_PROMPT)
    if len(sequences) > limits.max_train_sequences:
        raise InvalidArgument(
            "sequences", f"at most {limits.max_train_sequences} sequences per request (max_train_sequences), got {len(sequences)}"
        )
    total = sum(len(ids) for ids in sequences)
    if total > limits.max_train_tokens:
        raise InvalidArgument("sequences", f"{total} tokens in all exceed max_train_tokens {limits.max_train_tokens}")


def prepare_train_sequences(spec: TrainSpec, encoder: TextEncoder, bounds: ModelBounds, limits: Limits) -> list[PreparedSequence]:
    """Check a TrainStep request and return aligned per-token lists."""
    if not spec.sequences:
        raise InvalidArgument("sequences", "give at least one sequence")
    if len(spec.sequences) > limits.max_train_sequences:
        raise InvalidArgument(
            "sequences", f"at most {limits.max_train_sequences} sequences per step (max_train_sequences), got {len(spec.sequences)}"
        )
    check_loss(spec.loss)
    check_optimizer(spec.optimizer)
    policy_loss = spec.loss.function is not LossFunction.CROSS_ENTROPY
    prepared, total_tokens = [], 0
    for index, seq in enumerate(spec.sequences):
        field = f"sequences[{index}]"
        ids, default_weights = _sequence_tokens(field, seq, encoder, bounds)
        if len(ids) < 2:
            raise InvalidArgument(field, f"needs at least 2 tokens to predict one, got {len(ids)}")
        if len(ids) > bounds.max_seq_length:
            raise InvalidArgument(field, f"{len(ids)} tokens exceed max_seq_length {bounds.max_seq_length}")
        total_tokens += len(ids)
        weights = _per_token(f"{field}.loss_weights", seq.loss_weights, len(ids), default=0.0, low=0.0) if seq.loss_weights else default_weights
        if not math.isfinite(seq.advantage):
            raise InvalidArgument(f"{field}.advantage", f"must be finite, got {seq.advantage!r}")
        advantages = _per_token(f"{field}.advantages", seq.advantages, len(ids), default=seq.advantage)
        sampler = _per_token(f"{field}.sampler_logprobs", seq.sampler_logprobs, len(ids), default=0.0, high=0.0) if seq.sampler_logprobs else None
        if not policy_loss and (seq.advantages or seq.sampler_logprobs):
            raise InvalidArgument(field, "advantages and sampler_logprobs need a policy loss (IMPORTANCE_SAMPLING or PPO_CLIP)")
        prepared.append(PreparedSequence(ids, weights, advantages, sampler))
    if total_tokens > limits.max_train_tokens:
        raise InvalidArgument("sequences", f"{total_tokens} tokens in all exceed max_train_tokens {limits.max_train_tokens}")
    if not any(any(w > 0 for w in p.weights[1:]) for p in prepared):
        raise InvalidArgument("sequences", "every loss weight after position 0 is zero: nothing to train on")
    return prepared
