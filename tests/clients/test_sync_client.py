"""The synchronous Python client against the real server on the tiny 4-bit model."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import pytest

import tandem
from tandem.v1 import tandem_pb2 as pb
from tests.clients.helpers import eventually, metric
from tests.support.server import ServerProcess

GREEDY = {"max_tokens": 6, "temperature": 0}
LONG = {"max_tokens": 1000, "ignore_eos": True}
SFT_EXAMPLE = {"prompt": "The people", "completion": " say hello"}


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[tandem.Client]:
    with tandem.Client(server.address) as client:
        yield client


def test_get_model_describes_the_loaded_model(client: tandem.Client) -> None:
    model = client.get_model()
    assert model is not None
    assert model.model_name == "tandem/tiny"
    assert model.engine == pb.ENGINE_KIND_TRANSFORMERS
    assert model.load_in_4bit


def test_load_model_reports_progress_then_returns_the_model(client: tandem.Client) -> None:
    events: list[pb.LoadProgress] = []
    model = client.load_model(lora={"rank": 8}, on_progress=events.append)
    phases = [event.phase for event in events]
    assert phases[0] == pb.LOAD_PHASE_RESOLVE and phases[-1] == pb.LOAD_PHASE_READY
    assert phases == sorted(phases), "phases arrive in order"
    weights = [event for event in events if event.phase == pb.LOAD_PHASE_WEIGHTS and event.total]
    assert weights and weights[-1].done == weights[-1].total and weights[-1].unit == "layers"
    assert (model.lora.rank, model.adapter_version, model.step) == (8, 0, 0)
    assert client.get_model().lora.rank == 8


def test_generate_collects_one_completion_per_prompt_and_sample(client: tandem.Client) -> None:
    prompts = ["The people", [5, 6, 7]]
    completions = client.generate(prompts, sampling={"n": 2, "max_tokens": 4, "logprobs": 2, "ignore_eos": True})
    assert [(c.prompt_index, c.sample_index) for c in completions] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for completion in completions:
        assert completion.finish_reason == "length"
        assert len(completion.token_ids) == completion.completion_tokens == 4
        assert len(completion.logprobs) == 4 and all(lp <= 0 for lp in completion.logprobs)
        assert all(len(top) == 2 for top in completion.top_logprobs)
    assert completions[2].prompt_tokens == 3


def test_stream_deltas_join_into_the_collected_text(client: tandem.Client) -> None:
    chunks = list(client.generate_stream("The people", sampling=GREEDY))
    assert len(chunks) > 1, "the answer arrives in pieces"
    assert all(chunk.finish_reason == pb.FINISH_REASON_UNSPECIFIED for chunk in chunks[:-1])
    assert chunks[-1].usage.completion_tokens == sum(len(chunk.token_ids) for chunk in chunks)
    assert "".join(chunk.text for chunk in chunks) == client.generate("The people", sampling=GREEDY)[0].text


def test_generate_asks_for_whole_samples_and_the_stream_for_tokens(client: tandem.Client, server: ServerProcess) -> None:
    def streamed_calls() -> float:  # whole-sample calls have no first token of their own to time
        return metric(server, "tandem_time_to_first_token_seconds_count")

    before = streamed_calls()
    [completion] = client.generate("The people", sampling={"max_tokens": 5, "ignore_eos": True})
    assert len(completion.token_ids) == 5 and streamed_calls() == before
    list(client.generate_stream("The people", sampling={"max_tokens": 5, "ignore_eos": True}))
    assert streamed_calls() == before + 1
    [whole] = client.generate_stream("The people", sampling={"max_tokens": 5, "ignore_eos": True}, whole_samples=True)
    assert len(whole.token_ids) == 5 and whole.finish_reason == pb.FINISH_REASON_LENGTH and streamed_calls() == before + 1


def test_train_step_moves_the_adapter_version_that_samples_report(client: tandem.Client) -> None:
    before = client.get_model().adapter_version
    accumulated = client.train_step([SFT_EXAMPLE], accumulate=True)
    assert accumulated.outcome == pb.STEP_OUTCOME_ACCUMULATED and accumulated.adapter_version == before
    applied = client.train_step([SFT_EXAMPLE], optimizer={"learning_rate": 1e-2})
    assert applied.outcome == pb.STEP_OUTCOME_APPLIED
    assert applied.adapter_version == before + 1 and applied.accumulated_micro_batches == 0
    assert math.isfinite(applied.loss) and applied.tokens > 0
    assert client.generate("The people", sampling=GREEDY)[0].adapter_version == before + 1


def test_policy_loss_by_short_name(client: tandem.Client) -> None:
    sequence = {"token_ids": [5, 6, 7, 8], "advantage": 1.0}
    reply = client.train_step([sequence], loss="importance_sampling", optimizer={"learning_rate": 1e-3})
    assert reply.outcome == pb.STEP_OUTCOME_APPLIED
    assert reply.importance_ratio_mean == pytest.approx(1.0), "on-policy without sampler logprobs"


def test_compute_logprobs_of_current_and_base(client: tandem.Client) -> None:
    current = client.compute_logprobs([[5, 6, 7, 8], [9, 10]])
    assert [len(s.logprobs) for s in current.sequences] == [4, 2]
    assert all(s.logprobs[0] == 0 and all(lp < 0 for lp in s.logprobs[1:]) for s in current.sequences)
    assert current.adapter_version == client.get_model().adapter_version
    assert client.compute_logprobs([[5, 6, 7]], adapter="base").adapter_version == 0


def test_closing_a_stream_mid_way_cancels_it_on_the_server(client: tandem.Client, server: ServerProcess) -> None:
    cancelled_before = metric(server, "tandem_requests_total", rpc="Generate", code="CANCELLED")
    stream = client.generate_stream("The people", sampling=LONG)
    received = [next(stream), next(stream)]
    stream.close()
    assert all(chunk.finish_reason == pb.FINISH_REASON_UNSPECIFIED for chunk in received)
    assert eventually(lambda: metric(server, "tandem_requests_total", rpc="Generate", code="CANCELLED") == cancelled_before + 1)
    assert eventually(lambda: metric(server, "tandem_running_requests") == 0, timeout=2), "the engine dropped the sequence"
    assert client.generate("The people", sampling=GREEDY)[0].finish_reason, "the service still serves"


def test_deadline_exceeded_is_a_typed_error(client: tandem.Client, server: ServerProcess) -> None:
    started = time.monotonic()
    with pytest.raises(tandem.DeadlineExceeded) as caught:
        client.generate("The people", sampling=LONG, timeout=0.5)
    assert caught.value.code.name == "DEADLINE_EXCEEDED"
    assert time.monotonic() - started < 3
    assert eventually(lambda: metric(server, "tandem_running_requests") == 0, timeout=2)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.generate("x", sampling={"max_tokens": 0}), "max_tokens"),
        (lambda c: c.generate([], sampling=GREEDY), "prompts"),
        (lambda c: c.train_step([{"token_ids": [1, 2], "loss_weights": [1.0]}]), "loss_weights"),
        (lambda c: c.compute_logprobs([[10**7]]), "vocab"),
    ],
    ids=["max_tokens", "no_prompts", "weights_length", "token_out_of_vocab"],
)
def test_invalid_arguments_raise_invalid_argument(client: tandem.Client, call, field: str) -> None:
    with pytest.raises(tandem.InvalidArgument) as caught:
        call(client)
    assert caught.value.code.name == "INVALID_ARGUMENT"
    assert field in caught.value.details


def test_input_errors_are_caught_before_sending(client: tandem.Client) -> None:
    with pytest.raises(TypeError, match="prompt"):
        client.generate([3.5])
    with pytest.raises(ValueError, match="unknown loss"):
        client.train_step([SFT_EXAMPLE], loss="hinge")
    with pytest.raises(ValueError, match="max_token"):
        client.generate("x", sampling={"max_token": 3})
