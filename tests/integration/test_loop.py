"""The whole loop through the real server and the generated stubs:
LoadModel -> Generate -> TrainStep -> Generate, on the tiny 4-bit model."""

from __future__ import annotations

import math
import threading

import grpc
import pytest
from tandem.v1 import tandem_pb2 as pb

PROMPT = "The people"
COMPLETION = " say hello to the water"
GREEDY = pb.SamplingParams(temperature=0.0, max_tokens=12)


def collect(stub, request: pb.GenerateRequest) -> dict[tuple[int, int], dict]:
    """Gather a Generate stream per (prompt, sample): tokens, text, logprobs, last event."""
    samples: dict[tuple[int, int], dict] = {}
    for chunk in stub.Generate(request, timeout=60):
        sample = samples.setdefault((chunk.prompt_index, chunk.sample_index), {"tokens": [], "text": "", "logprobs": [], "versions": set()})
        sample["tokens"] += chunk.token_ids
        sample["text"] += chunk.text
        sample["logprobs"] += chunk.logprobs
        sample["versions"].add(chunk.adapter_version)
        sample["last"] = chunk
    return samples


def greedy(stub, prompt: str = PROMPT) -> dict:
    return collect(stub, pb.GenerateRequest(prompts=[pb.Prompt(text=prompt)], sampling=GREEDY))[(0, 0)]


def sft_step(stub, lr: float = 1e-2) -> pb.TrainStepResponse:
    sequence = pb.TrainSequence(prompt=PROMPT, completion=COMPLETION)
    return stub.TrainStep(pb.TrainStepRequest(sequences=[sequence], optimizer=pb.OptimizerConfig(learning_rate=lr)), timeout=60)


def model(stub) -> pb.ModelInfo:
    return stub.GetModel(pb.GetModelRequest(), timeout=10).model


def test_load_model_streams_progress_then_the_model(stub):
    events = list(stub.LoadModel(pb.LoadModelRequest(max_seq_length=256, lora=pb.LoraConfig(rank=8, alpha=16)), timeout=120))
    phases = [e.progress.phase for e in events if e.HasField("progress")]
    assert phases[0] == pb.LOAD_PHASE_RESOLVE and phases[-1] == pb.LOAD_PHASE_READY
    assert pb.LOAD_PHASE_WEIGHTS in phases and pb.LOAD_PHASE_ENGINE in phases
    assert events[-1].HasField("model")
    info = events[-1].model
    assert info.model_name == "tandem/tiny" and info.engine == pb.ENGINE_KIND_TRANSFORMERS
    assert info.load_in_4bit and info.max_seq_length == 256 and info.lora.rank == 8
    assert info.dtype == pb.D_TYPE_FLOAT32 and info.device == "cpu"
    assert info.adapter_version == 0 and info.step == 0
    assert info.memory.base_weights_bytes > 0 and info.memory.adapter_bytes > 0 and info.memory.base_weight_copies == 1
    assert model(stub).lora.rank == 8


def test_sft_steps_change_what_the_engine_samples(stub):
    before = greedy(stub)
    assert before["text"] != COMPLETION
    losses = [sft_step(stub).loss for _ in range(20)]
    assert losses[-1] < losses[0] / 4
    after = greedy(stub)
    assert after["text"] == COMPLETION
    assert after["last"].finish_reason == pb.FINISH_REASON_STOP  # the model learned the end-of-sequence token too
    assert after["versions"] == {model(stub).adapter_version}
    assert model(stub).adapter_version >= 20 and model(stub).step >= 20


def test_a_step_reports_outcome_counts_and_phase_times(stub):
    version = model(stub).adapter_version
    reply = sft_step(stub, lr=1e-4)
    assert reply.outcome == pb.STEP_OUTCOME_APPLIED
    assert reply.adapter_version == version + 1 and reply.step == model(stub).step
    assert reply.tokens == len(COMPLETION.split()) + 1 or reply.tokens > 1
    assert math.isfinite(reply.loss) and reply.grad_norm > 0
    assert reply.seconds.forward_backward > 0 and reply.seconds.total >= reply.seconds.forward_backward


def test_gradient_accumulation_steps_once_for_several_calls(stub):
    version = model(stub).adapter_version
    sequence = pb.TrainSequence(prompt=PROMPT, completion=COMPLETION)
    for expected in (1, 2):
        reply = stub.TrainStep(pb.TrainStepRequest(sequences=[sequence], accumulate=True), timeout=60)
        assert reply.outcome == pb.STEP_OUTCOME_ACCUMULATED and reply.accumulated_micro_batches == expected
        assert reply.adapter_version == version
    reply = stub.TrainStep(pb.TrainStepRequest(sequences=[sequence]), timeout=60)
    assert reply.outcome == pb.STEP_OUTCOME_APPLIED and reply.accumulated_micro_batches == 0
    assert reply.adapter_version == version + 1


def test_same_seed_same_tokens(stub):
    request = pb.GenerateRequest(prompts=[pb.Prompt(text="Water")], sampling=pb.SamplingParams(temperature=1.0, max_tokens=10, seed=5, ignore_eos=True))
    first, second = collect(stub, request), collect(stub, request)
    assert first[(0, 0)]["tokens"] == second[(0, 0)]["tokens"]
    request.sampling.seed = 6
    assert collect(stub, request)[(0, 0)]["tokens"] != first[(0, 0)]["tokens"]


def test_whole_samples_arrive_once_each_as_the_stream_would_join_them(stub):
    request = pb.GenerateRequest(
        prompts=[pb.Prompt(text="Water"), pb.Prompt(token_ids=pb.TokenIds(ids=[1, 300, 301]))],
        sampling=pb.SamplingParams(n=2, max_tokens=6, seed=3, logprobs=2, ignore_eos=True),
    )
    streamed = collect(stub, request)
    request.whole_samples = True
    messages = list(stub.Generate(request, timeout=60))
    assert sorted((m.prompt_index, m.sample_index) for m in messages) == sorted(streamed), "one message per sample"
    for message in messages:
        joined = streamed[(message.prompt_index, message.sample_index)]
        assert len(joined["tokens"]) == 6 and message.finish_reason == pb.FINISH_REASON_LENGTH
        assert list(message.token_ids) == joined["tokens"] and message.text == joined["text"]
        assert list(message.logprobs) == joined["logprobs"] and message.usage.completion_tokens == 6


def test_n_samples_per_prompt_and_token_id_prompts(stub):
    request = pb.GenerateRequest(
        prompts=[pb.Prompt(text="Water"), pb.Prompt(token_ids=pb.TokenIds(ids=[1, 300, 301]))],
        sampling=pb.SamplingParams(n=3, max_tokens=5, seed=1, ignore_eos=True),
    )
    samples = collect(stub, request)
    assert set(samples) == {(p, s) for p in range(2) for s in range(3)}
    for (prompt, _), sample in samples.items():
        assert len(sample["tokens"]) == 5
        assert sample["last"].finish_reason == pb.FINISH_REASON_LENGTH
        assert sample["last"].usage.completion_tokens == 5
        assert sample["last"].usage.prompt_tokens == (3 if prompt == 1 else sample["last"].usage.prompt_tokens)
    assert len({tuple(samples[(0, s)]["tokens"]) for s in range(3)}) > 1


def test_stop_strings_cut_the_text(stub):
    full = greedy(stub)["text"]
    stop_at = full[3:6]
    request = pb.GenerateRequest(prompts=[pb.Prompt(text=PROMPT)], sampling=pb.SamplingParams(temperature=0.0, max_tokens=12, stop=[stop_at]))
    sample = collect(stub, request)[(0, 0)]
    assert sample["text"] == full[: full.index(stop_at)]
    assert sample["last"].finish_reason == pb.FINISH_REASON_STOP


def test_stop_token_ids_end_the_sample(stub):
    tokens = greedy(stub)["tokens"]
    request = pb.GenerateRequest(prompts=[pb.Prompt(text=PROMPT)], sampling=pb.SamplingParams(temperature=0.0, max_tokens=12, stop_token_ids=[tokens[2]]))
    sample = collect(stub, request)[(0, 0)]
    assert sample["tokens"] == tokens[: tokens.index(tokens[2]) + 1]
    assert sample["last"].finish_reason == pb.FINISH_REASON_STOP


def test_sampled_logprobs_match_the_trainer_forward_pass(stub):
    request = pb.GenerateRequest(
        prompts=[pb.Prompt(token_ids=pb.TokenIds(ids=[1, 300, 301]))],
        sampling=pb.SamplingParams(temperature=1.0, max_tokens=8, seed=3, logprobs=2, ignore_eos=True),
    )
    sample = collect(stub, request)[(0, 0)]
    assert [lp.token_id for lp in sample["logprobs"]] == sample["tokens"]
    assert all(len(lp.top) == 2 and lp.top[0].logprob >= lp.top[1].logprob for lp in sample["logprobs"])
    sequence = [1, 300, 301, *sample["tokens"]]
    reply = stub.ComputeLogprobs(pb.ComputeLogprobsRequest(sequences=[pb.TokenIds(ids=sequence)]), timeout=30)
    assert reply.adapter_version == model(stub).adapter_version
    assert reply.sequences[0].logprobs[3:] == pytest.approx([lp.logprob for lp in sample["logprobs"]], abs=1e-3)


def test_base_model_ignores_the_trained_adapter(stub):
    assert model(stub).adapter_version > 0
    base = collect(stub, pb.GenerateRequest(prompts=[pb.Prompt(text=PROMPT)], sampling=GREEDY, adapter="base"))[(0, 0)]
    assert base["text"] != COMPLETION and base["versions"] == {0}


def test_train_step_waits_for_running_samples_and_later_samples_see_it(stub):
    """The device loop is a barrier: a sample never mixes adapter versions."""
    version = model(stub).adapter_version
    long_request = pb.GenerateRequest(prompts=[pb.Prompt(text="Water")], sampling=pb.SamplingParams(max_tokens=200, ignore_eos=True))
    stream = stub.Generate(long_request, timeout=120)
    first = next(stream)
    trained = threading.Thread(target=lambda: sft_step(stub, lr=1e-5))
    trained.start()
    versions = {first.adapter_version} | {chunk.adapter_version for chunk in stream}
    trained.join(60)
    assert versions == {version}
    assert greedy(stub)["versions"] == {version + 1}


def test_unload_then_generate_fails_precondition_and_load_restores(stub):
    assert stub.UnloadModel(pb.UnloadModelRequest(), timeout=30).unloaded
    assert not stub.GetModel(pb.GetModelRequest(), timeout=10).loaded
    with pytest.raises(grpc.RpcError) as error:
        greedy(stub)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "LoadModel" in error.value.details()
    list(stub.LoadModel(pb.LoadModelRequest(), timeout=120))
    assert model(stub).adapter_version == 0
