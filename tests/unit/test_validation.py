"""Request validation: each field's range, with the field named in the message."""

import math

import pytest

from service.config import Limits
from service.errors import InvalidArgument
from service.runtime.specs import (
    GenerateSpec,
    LossFunction,
    LossSpec,
    OptimizerSpec,
    PromptSpec,
    SamplingSpec,
    TrainSequenceSpec,
    TrainSpec,
)
from service.runtime.validation import (
    EMPTY_PROMPT,
    ModelBounds,
    check_checkpoint_name,
    check_logprob_request_size,
    prepare_prompts,
    prepare_train_sequences,
)

BOUNDS = ModelBounds(vocab_size=100, max_seq_length=32, eos_token_id=2)
LIMITS = Limits(max_prompts_per_request=4, max_samples_per_prompt=8, max_new_tokens=16, max_train_sequences=3, max_train_tokens=40)


class CharEncoder:
    """One token per character (code point mod 90 + 10), BOS=1 when special tokens are added."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return ([1] if add_special_tokens else []) + [10 + ord(c) % 90 for c in text]


def generate(*prompts: PromptSpec, **sampling) -> GenerateSpec:
    return GenerateSpec(prompts=prompts, sampling=SamplingSpec(**sampling))


def train(*sequences: TrainSequenceSpec, loss=LossFunction.CROSS_ENTROPY, **optimizer) -> TrainSpec:
    return TrainSpec(sequences=sequences, loss=LossSpec(loss), optimizer=OptimizerSpec(**optimizer))


def rejects(field: str, call) -> None:
    with pytest.raises(InvalidArgument) as error:
        call()
    assert error.value.field == field, str(error.value)


def test_text_and_token_prompts_become_ids():
    ids = prepare_prompts(generate(PromptSpec(text="ab"), PromptSpec(token_ids=(5, 6))), CharEncoder(), BOUNDS, LIMITS)
    assert ids == [[1, 10 + ord("a") % 90, 10 + ord("b") % 90], [5, 6]]


@pytest.mark.parametrize(
    ("field", "spec"),
    [
        ("prompts", generate()),
        ("prompts", generate(*[PromptSpec(text="a")] * 5)),
        ("prompts[0]", generate(PromptSpec())),
        ("prompts[0]", generate(PromptSpec(token_ids=()))),
        ("prompts[0].token_ids.ids[1]", generate(PromptSpec(token_ids=(5, 100)))),
        ("prompts[0]", generate(PromptSpec(token_ids=tuple(range(20))), max_tokens=16)),
        ("sampling.n", generate(PromptSpec(text="a"), n=0)),
        ("sampling.n", generate(PromptSpec(text="a"), n=9)),
        ("sampling.temperature", generate(PromptSpec(text="a"), temperature=-0.1)),
        ("sampling.temperature", generate(PromptSpec(text="a"), temperature=math.nan)),
        ("sampling.top_p", generate(PromptSpec(text="a"), top_p=0.0)),
        ("sampling.top_p", generate(PromptSpec(text="a"), top_p=1.5)),
        ("sampling.min_p", generate(PromptSpec(text="a"), min_p=-1.0)),
        ("sampling.max_tokens", generate(PromptSpec(text="a"), max_tokens=0)),
        ("sampling.max_tokens", generate(PromptSpec(text="a"), max_tokens=17)),
        ("sampling.logprobs", generate(PromptSpec(text="a"), logprobs=21)),
        ("sampling.stop", generate(PromptSpec(text="a"), stop=("",))),
        ("sampling.stop_token_ids[0]", generate(PromptSpec(text="a"), stop_token_ids=(100,))),
    ],
)
def test_bad_generate_requests_name_the_field(field, spec):
    rejects(field, lambda: prepare_prompts(spec, CharEncoder(), BOUNDS, LIMITS))


def test_one_rule_for_empty_prompts_in_generate_and_compute_logprobs():
    """Empty text (which the encoder would turn into a lone BOS) and an empty id list are refused alike,
    with one message that says how to start from nothing."""
    messages = []
    for empty in (PromptSpec(text=""), PromptSpec(token_ids=())):
        with pytest.raises(InvalidArgument) as error:
            prepare_prompts(generate(PromptSpec(text="a"), empty), CharEncoder(), BOUNDS, LIMITS)
        assert error.value.field == "prompts[1]"
        messages.append(str(error.value).removeprefix("prompts[1]: "))
    with pytest.raises(InvalidArgument) as error:
        check_logprob_request_size([[5, 6], []], LIMITS)
    assert error.value.field == "sequences[1].ids"
    messages.append(str(error.value).removeprefix("sequences[1].ids: "))
    assert messages == [EMPTY_PROMPT] * 3 and "bos_token_id" in EMPTY_PROMPT
    assert prepare_prompts(generate(PromptSpec(token_ids=(1,))), CharEncoder(), BOUNDS, LIMITS) == [[1]]


def test_bad_adapter_selector():
    rejects("adapter", lambda: prepare_prompts(GenerateSpec((PromptSpec(text="a"),), adapter="../x"), CharEncoder(), BOUNDS, LIMITS))


def test_text_sequences_weight_only_the_completion_and_end_with_eos():
    (seq,) = prepare_train_sequences(train(TrainSequenceSpec(prompt="ab", completion="c")), CharEncoder(), BOUNDS, LIMITS)
    assert seq.token_ids[-1] == BOUNDS.eos_token_id
    assert seq.weights == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert seq.sampler_logprobs is None


def test_token_sequences_default_to_weight_one_and_per_sequence_advantage():
    spec = train(TrainSequenceSpec(token_ids=(1, 5, 6), advantage=0.5), loss=LossFunction.PPO_CLIP)
    (seq,) = prepare_train_sequences(spec, CharEncoder(), BOUNDS, LIMITS)
    assert seq.weights == [1.0, 1.0, 1.0]
    assert seq.advantages == [0.5, 0.5, 0.5]


@pytest.mark.parametrize(
    ("field", "spec"),
    [
        ("sequences", train()),
        ("sequences", train(*[TrainSequenceSpec(token_ids=(1, 2))] * 4)),
        ("sequences[0]", train(TrainSequenceSpec(token_ids=(1,)))),
        ("sequences[0]", train(TrainSequenceSpec(token_ids=(1, 2), prompt="x"))),
        ("sequences[0].completion", train(TrainSequenceSpec(prompt="x"))),
        ("sequences[0].token_ids[1]", train(TrainSequenceSpec(token_ids=(1, 100)))),
        ("sequences[0]", train(TrainSequenceSpec(token_ids=tuple(range(33))))),
        ("sequences[0].loss_weights", train(TrainSequenceSpec(token_ids=(1, 2, 3), loss_weights=(1.0, 1.0)))),
        ("sequences[0].loss_weights[1]", train(TrainSequenceSpec(token_ids=(1, 2), loss_weights=(0.0, math.nan)))),
        ("sequences[0].loss_weights[1]", train(TrainSequenceSpec(token_ids=(1, 2), loss_weights=(0.0, -1.0)))),
        ("sequences[0].advantages[0]", train(TrainSequenceSpec(token_ids=(1, 2), advantages=(math.inf, 0.0)), loss=LossFunction.PPO_CLIP)),
        ("sequences[0].advantage", train(TrainSequenceSpec(token_ids=(1, 2), advantage=math.nan), loss=LossFunction.PPO_CLIP)),
        ("sequences[0].sampler_logprobs[1]", train(TrainSequenceSpec(token_ids=(1, 2), sampler_logprobs=(0.0, 0.5)), loss=LossFunction.PPO_CLIP)),
        ("sequences[0].sampler_logprobs", train(TrainSequenceSpec(token_ids=(1, 2), sampler_logprobs=(0.0,)), loss=LossFunction.PPO_CLIP)),
        ("sequences[0]", train(TrainSequenceSpec(token_ids=(1, 2), advantages=(1.0, 1.0)))),
        ("sequences", train(TrainSequenceSpec(token_ids=(1, 2), loss_weights=(1.0, 0.0)))),
        ("sequences", train(*[TrainSequenceSpec(token_ids=tuple(range(1, 15)))] * 3)),
        ("optimizer.learning_rate", train(TrainSequenceSpec(token_ids=(1, 2)), learning_rate=-1.0)),
        ("optimizer.beta1", train(TrainSequenceSpec(token_ids=(1, 2)), beta1=1.0)),
        ("optimizer.eps", train(TrainSequenceSpec(token_ids=(1, 2)), eps=0.0)),
        ("optimizer.max_grad_norm", train(TrainSequenceSpec(token_ids=(1, 2)), max_grad_norm=math.inf)),
    ],
)
def test_bad_train_requests_name_the_field(field, spec):
    rejects(field, lambda: prepare_train_sequences(spec, CharEncoder(), BOUNDS, LIMITS))


def test_ppo_clip_range_is_checked():
    spec = TrainSpec((TrainSequenceSpec(token_ids=(1, 2)),), loss=LossSpec(LossFunction.PPO_CLIP, clip_low=1.5))
    rejects("loss.clip_low", lambda: prepare_train_sequences(spec, CharEncoder(), BOUNDS, LIMITS))


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "..", "base", "x" * 65, "naïve"])
def test_bad_checkpoint_names(name):
    rejects("name", lambda: check_checkpoint_name("name", name))


def test_good_checkpoint_name():
    check_checkpoint_name("name", "run-1_step.20")
