"""A catalogue of malformed and abusive requests.

Each gets the right status code and a message naming the field (or limit) to
change; afterwards the service is still SERVING and its state (model, adapter
version, step, accumulated micro-batches, saved checkpoints) is unchanged.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from google.protobuf.message import Message
from tandem.v1 import tandem_pb2 as pb

from tests.support.server import REPO, ServerProcess, require_tool

INVALID, NOT_FOUND, FAILED = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION
OOV = 10**6  # beyond any vocabulary of the tiny model
NAN, INF = float("nan"), float("inf")
STREAMING = {"Generate", "LoadModel"}


@dataclass(frozen=True)
class Bad:
    """One bad request: the RPC, the message (or raw bytes), the expected code and a word the message must contain."""

    name: str
    rpc: str
    request: Message | bytes
    code: grpc.StatusCode
    names: str


def gen(*prompts: pb.Prompt, **sampling: Any) -> pb.GenerateRequest:
    return pb.GenerateRequest(prompts=list(prompts) or [pb.Prompt(text="The people")], sampling=pb.SamplingParams(**sampling))


def ids(*token_ids: int) -> pb.Prompt:
    return pb.Prompt(token_ids=pb.TokenIds(ids=list(token_ids)))


def seq(**fields: Any) -> pb.TrainSequence:
    fields.setdefault("token_ids", [5, 6, 7, 8])
    return pb.TrainSequence(**fields)


def train(*sequences: pb.TrainSequence, function: int = pb.LOSS_FUNCTION_CROSS_ENTROPY, **optimizer: Any) -> pb.TrainStepRequest:
    return pb.TrainStepRequest(sequences=list(sequences) or [seq()], loss=pb.LossConfig(function=function), optimizer=pb.OptimizerConfig(**optimizer))


def ppo(*sequences: pb.TrainSequence, **loss: Any) -> pb.TrainStepRequest:
    return pb.TrainStepRequest(sequences=list(sequences) or [seq()], loss=pb.LossConfig(function=pb.LOSS_FUNCTION_PPO_CLIP, **loss))


IS = pb.LOSS_FUNCTION_IMPORTANCE_SAMPLING

CATALOGUE = [
    # --- Generate: prompts
    Bad("generate-empty", "Generate", pb.GenerateRequest(), INVALID, "prompts"),
    Bad("generate-prompt-unset", "Generate", pb.GenerateRequest(prompts=[pb.Prompt()]), INVALID, "prompts[0]"),
    Bad("generate-empty-token-ids", "Generate", gen(ids()), INVALID, "prompts[0]: the prompt is empty"),
    Bad("generate-empty-text", "Generate", gen(pb.Prompt(text="The people"), pb.Prompt(text="")), INVALID, "prompts[1]: the prompt is empty"),
    Bad("generate-oov-token", "Generate", gen(ids(5, OOV)), INVALID, "prompts[0].token_ids.ids[1]"),
    Bad("generate-max-uint32-token", "Generate", gen(ids(2**32 - 1)), INVALID, "prompts[0].token_ids.ids[0]"),
    Bad("generate-too-many-prompts", "Generate", gen(*[pb.Prompt(text="a")] * 257), INVALID, "max_prompts_per_request"),
    Bad("generate-prompt-past-context", "Generate", gen(ids(*[5] * 2040), max_tokens=16), INVALID, "max_seq_length"),
    # --- Generate: sampling parameters
    Bad("sampling-n-zero", "Generate", gen(n=0), INVALID, "sampling.n"),
    Bad("sampling-n-huge", "Generate", gen(n=2**32 - 1), INVALID, "sampling.n"),
    Bad("sampling-temperature-negative", "Generate", gen(temperature=-1), INVALID, "sampling.temperature"),
    Bad("sampling-temperature-nan", "Generate", gen(temperature=NAN), INVALID, "sampling.temperature"),
    Bad("sampling-temperature-inf", "Generate", gen(temperature=INF), INVALID, "sampling.temperature"),
    Bad("sampling-top-p-zero", "Generate", gen(top_p=0), INVALID, "sampling.top_p"),
    Bad("sampling-top-p-above-one", "Generate", gen(top_p=1.5), INVALID, "sampling.top_p"),
    Bad("sampling-top-p-nan", "Generate", gen(top_p=NAN), INVALID, "sampling.top_p"),
    Bad("sampling-min-p-negative", "Generate", gen(min_p=-0.1), INVALID, "sampling.min_p"),
    Bad("sampling-min-p-above-one", "Generate", gen(min_p=2), INVALID, "sampling.min_p"),
    Bad("sampling-max-tokens-zero", "Generate", gen(max_tokens=0), INVALID, "sampling.max_tokens"),
    Bad("sampling-max-tokens-huge", "Generate", gen(max_tokens=2**32 - 1), INVALID, "max_new_tokens"),
    Bad("sampling-logprobs-huge", "Generate", gen(logprobs=10**6), INVALID, "max_top_logprobs"),
    Bad("sampling-too-many-stops", "Generate", gen(stop=[str(i) for i in range(17)]), INVALID, "max_stop_strings"),
    Bad("sampling-empty-stop", "Generate", gen(stop=[""]), INVALID, "sampling.stop"),
    Bad("sampling-oov-stop-token", "Generate", gen(stop_token_ids=[OOV]), INVALID, "sampling.stop_token_ids[0]"),
    Bad("generate-adapter-path", "Generate", pb.GenerateRequest(prompts=[pb.Prompt(text="a")], adapter="../etc"), INVALID, "adapter"),
    Bad("generate-adapter-too-long", "Generate", pb.GenerateRequest(prompts=[pb.Prompt(text="a")], adapter="a" * 65), INVALID, "adapter"),
    Bad("generate-adapter-unknown", "Generate", pb.GenerateRequest(prompts=[pb.Prompt(text="a")], adapter="never-saved"), NOT_FOUND, "never-saved"),
    # --- TrainStep: sequences
    Bad("train-empty", "TrainStep", pb.TrainStepRequest(), INVALID, "sequences"),
    Bad("train-sequence-empty", "TrainStep", train(pb.TrainSequence()), INVALID, "sequences[0]"),
    Bad("train-ids-and-text", "TrainStep", train(seq(completion="x")), INVALID, "sequences[0]"),
    Bad("train-one-token", "TrainStep", train(seq(token_ids=[5])), INVALID, "sequences[0]"),
    Bad("train-oov-token", "TrainStep", train(seq(token_ids=[5, OOV])), INVALID, "sequences[0].token_ids[1]"),
    Bad("train-too-long", "TrainStep", train(seq(token_ids=[5] * 2049)), INVALID, "max_seq_length"),
    Bad("train-too-many-sequences", "TrainStep", train(*[seq()] * 513), INVALID, "max_train_sequences"),
    Bad("train-weights-length", "TrainStep", train(seq(loss_weights=[1, 1])), INVALID, "sequences[0].loss_weights"),
    Bad("train-weights-nan", "TrainStep", train(seq(loss_weights=[0, 1, NAN, 1])), INVALID, "sequences[0].loss_weights[2]"),
    Bad("train-weights-inf", "TrainStep", train(seq(loss_weights=[0, INF, 1, 1])), INVALID, "sequences[0].loss_weights[1]"),
    Bad("train-weights-negative", "TrainStep", train(seq(loss_weights=[0, 1, -1, 1])), INVALID, "sequences[0].loss_weights[2]"),
    Bad("train-weights-all-zero", "TrainStep", train(seq(loss_weights=[1, 0, 0, 0])), INVALID, "sequences"),
    Bad("train-advantage-nan", "TrainStep", train(seq(advantage=NAN), function=IS), INVALID, "sequences[0].advantage"),
    Bad("train-advantage-inf", "TrainStep", train(seq(advantage=-INF), function=IS), INVALID, "sequences[0].advantage"),
    Bad("train-advantages-length", "TrainStep", train(seq(advantages=[1, 1, 1]), function=IS), INVALID, "sequences[0].advantages"),
    Bad("train-advantages-nan", "TrainStep", train(seq(advantages=[0, 1, NAN, 1]), function=IS), INVALID, "sequences[0].advantages[2]"),
    Bad("train-sampler-logprob-positive", "TrainStep", train(seq(sampler_logprobs=[0, -1, 0.5, -1]), function=IS), INVALID, "sampler_logprobs[2]"),
    Bad("train-sampler-logprob-nan", "TrainStep", train(seq(sampler_logprobs=[0, NAN, -1, -1]), function=IS), INVALID, "sampler_logprobs[1]"),
    Bad("train-advantages-without-policy-loss", "TrainStep", train(seq(advantages=[0, 1, 1, 1])), INVALID, "sequences[0]"),
    # --- TrainStep: loss and optimizer
    Bad("train-loss-unknown-enum", "TrainStep", train(function=99), INVALID, "loss.function"),
    Bad("train-clip-low-negative", "TrainStep", ppo(clip_low=-0.1), INVALID, "loss.clip_low"),
    Bad("train-clip-high-nan", "TrainStep", ppo(clip_high=NAN), INVALID, "loss.clip_high"),
    Bad("train-lr-negative", "TrainStep", train(learning_rate=-1e-3), INVALID, "optimizer.learning_rate"),
    Bad("train-lr-nan", "TrainStep", train(learning_rate=NAN), INVALID, "optimizer.learning_rate"),
    Bad("train-beta1-one", "TrainStep", train(beta1=1.0), INVALID, "optimizer.beta1"),
    Bad("train-beta2-negative", "TrainStep", train(beta2=-0.5), INVALID, "optimizer.beta2"),
    Bad("train-eps-zero", "TrainStep", train(eps=0), INVALID, "optimizer.eps"),
    Bad("train-weight-decay-inf", "TrainStep", train(weight_decay=INF), INVALID, "optimizer.weight_decay"),
    Bad("train-grad-norm-negative", "TrainStep", train(max_grad_norm=-1), INVALID, "optimizer.max_grad_norm"),
    # --- ComputeLogprobs
    Bad("logprobs-empty", "ComputeLogprobs", pb.ComputeLogprobsRequest(), INVALID, "sequences"),
    Bad("logprobs-empty-sequence", "ComputeLogprobs", pb.ComputeLogprobsRequest(sequences=[pb.TokenIds()]), INVALID, "sequences[0].ids: the prompt is empty"),
    Bad("logprobs-oov", "ComputeLogprobs", pb.ComputeLogprobsRequest(sequences=[pb.TokenIds(ids=[5, OOV])]), INVALID, "sequences[0].ids[1]"),
    Bad("logprobs-adapter-path", "ComputeLogprobs", pb.ComputeLogprobsRequest(sequences=[pb.TokenIds(ids=[5, 6])], adapter="a/b"), INVALID, "adapter"),
    # --- LoadModel (refused before the loaded model is released)
    Bad("load-max-seq-length-tiny", "LoadModel", pb.LoadModelRequest(max_seq_length=1), INVALID, "max_seq_length"),
    Bad("load-gpu-fraction-nan", "LoadModel", pb.LoadModelRequest(gpu_memory_utilization=NAN), INVALID, "gpu_memory_utilization"),
    Bad("load-rank-zero", "LoadModel", pb.LoadModelRequest(lora=pb.LoraConfig(rank=0)), INVALID, "lora.rank"),
    Bad("load-rank-above-max", "LoadModel", pb.LoadModelRequest(max_lora_rank=8, lora=pb.LoraConfig(rank=9)), INVALID, "lora.rank"),
    Bad("load-dropout-one", "LoadModel", pb.LoadModelRequest(lora=pb.LoraConfig(dropout=1.0)), INVALID, "lora.dropout"),
    Bad("load-alpha-nan", "LoadModel", pb.LoadModelRequest(lora=pb.LoraConfig(alpha=NAN)), INVALID, "lora.alpha"),
    Bad("load-dtype-unknown-enum", "LoadModel", pb.LoadModelRequest(dtype=42), INVALID, "dtype"),
    Bad("load-random-state-huge", "LoadModel", pb.LoadModelRequest(random_state=2**64 - 1), INVALID, "random_state"),
    Bad("load-model-name-dotdot", "LoadModel", pb.LoadModelRequest(model_name="../../etc"), INVALID, "model_name"),
    Bad("load-model-name-absolute", "LoadModel", pb.LoadModelRequest(model_name="/etc"), INVALID, "model_name"),
    Bad("load-fast-inference-on-cpu", "LoadModel", pb.LoadModelRequest(fast_inference=True), FAILED, "fast_inference"),
    Bad("load-unknown-target-module", "LoadModel", pb.LoadModelRequest(lora=pb.LoraConfig(target_modules=["no_such_proj"])), INVALID, "lora.target_modules"),
    Bad("load-unadaptable-target-module", "LoadModel", pb.LoadModelRequest(lora=pb.LoraConfig(target_modules=["norm"])), INVALID, "lora.target_modules"),
    # --- adapter checkpoints: names confined to the checkpoint root
    Bad("save-name-empty", "SaveAdapter", pb.SaveAdapterRequest(name=""), INVALID, "name"),
    Bad("save-name-dotdot", "SaveAdapter", pb.SaveAdapterRequest(name="../escape"), INVALID, "name"),
    Bad("save-name-absolute", "SaveAdapter", pb.SaveAdapterRequest(name="/etc/x"), INVALID, "name"),
    Bad("save-name-hidden", "SaveAdapter", pb.SaveAdapterRequest(name=".tmp-x"), INVALID, "name"),
    Bad("save-name-base", "SaveAdapter", pb.SaveAdapterRequest(name="base"), INVALID, "name"),
    Bad("save-name-non-ascii", "SaveAdapter", pb.SaveAdapterRequest(name="ckpt\u2215x"), INVALID, "name"),
    Bad("load-adapter-missing", "LoadAdapter", pb.LoadAdapterRequest(name="never-saved"), NOT_FOUND, "never-saved"),
    Bad("load-adapter-dotdot", "LoadAdapter", pb.LoadAdapterRequest(name=".."), INVALID, "name"),
    Bad("delete-adapter-dotdot", "DeleteAdapter", pb.DeleteAdapterRequest(name="../adapters"), INVALID, "name"),
    # --- bytes that are not the message: sent raw, bypassing the client's serializer
    Bad("raw-bad-utf8-prompt", "Generate", b"\x0a\x04\x0a\x02\xff\xfe", INVALID, "prompts[0].text"),
    Bad("raw-bad-utf8-completion", "TrainStep", b"\x0a\x04\x1a\x02\xc3\x28", INVALID, "sequences[0].completion"),
    Bad("raw-bad-utf8-model-name", "LoadModel", b"\x0a\x01\x80", INVALID, "model_name"),
    Bad("raw-truncated-length", "Generate", b"\x0a\xff", INVALID, "prompts[0]"),
    Bad("raw-garbage", "TrainStep", b"\xff\xff\xff\xff", INVALID, "TrainStepRequest"),
]


def _invoke(channel: grpc.Channel, rpc: str, request: Message | bytes, timeout: float = 60) -> Any:
    """Call ``rpc`` with a message, or with raw bytes that no serializer touches."""
    method = f"/tandem.v1.TandemService/{rpc}"
    serialize = None if isinstance(request, bytes) else type(request).SerializeToString
    if rpc in STREAMING:
        return list(channel.unary_stream(method, request_serializer=serialize)(request, timeout=timeout))
    return channel.unary_unary(method, request_serializer=serialize)(request, timeout=timeout)


def _state(channel: grpc.Channel) -> tuple:
    model = channel.unary_unary("/tandem.v1.TandemService/GetModel", response_deserializer=pb.GetModelResponse.FromString)(b"", timeout=30).model
    listing = channel.unary_unary("/tandem.v1.TandemService/ListAdapters", response_deserializer=pb.ListAdaptersResponse.FromString)(b"", timeout=30)
    return model.model_name, model.adapter_version, model.step, model.accumulated_micro_batches, tuple(c.name for c in listing.checkpoints)


@pytest.fixture(scope="module")
def channel(server: ServerProcess):
    with grpc.insecure_channel(server.address) as channel:
        yield channel


@pytest.fixture(scope="module")
def trained(channel: grpc.Channel) -> None:
    """One applied step first, so "unchanged" compares against a non-trivial state."""
    reply = pb.TrainStepResponse.FromString(_invoke(channel, "TrainStep", train(learning_rate=1e-3)))
    assert reply.outcome == pb.STEP_OUTCOME_APPLIED


def test_the_catalogue_has_at_least_40_requests() -> None:
    assert len(CATALOGUE) >= 40 and len({bad.name for bad in CATALOGUE}) == len(CATALOGUE)


@pytest.mark.parametrize("bad", CATALOGUE, ids=lambda bad: bad.name)
def test_bad_request_is_refused_precisely_and_changes_nothing(server: ServerProcess, channel: grpc.Channel, trained: None, bad: Bad) -> None:
    before = _state(channel)
    with pytest.raises(grpc.RpcError) as error:
        _invoke(channel, bad.rpc, bad.request)
    assert error.value.code() == bad.code, error.value.details()
    assert bad.names in error.value.details()
    assert "Traceback" not in error.value.details() and str(REPO) not in error.value.details()
    assert _state(channel) == before
    assert server.health() == health_pb2.HealthCheckResponse.SERVING


# Abusive but valid: accepted and served, clamped where the value is larger than meaningful.
ACCEPTED = [
    ("top-k-beyond-vocabulary", gen(top_k=2**32 - 1, max_tokens=3)),
    ("largest-seed", gen(seed=2**64 - 1, max_tokens=3)),
    ("temperature-zero-with-filters", gen(temperature=0, top_p=1e-9, min_p=1.0, max_tokens=3)),
    ("long-stop-string", gen(stop=["x" * 10_000], max_tokens=3)),
    ("control-characters", gen(pb.Prompt(text="\x00\x01\u202e\ufeff"), max_tokens=3)),
]


@pytest.mark.parametrize("request_", [r for _, r in ACCEPTED], ids=[n for n, _ in ACCEPTED])
def test_abusive_but_valid_generate_is_served(channel: grpc.Channel, request_: pb.GenerateRequest) -> None:
    chunks = [pb.GenerateResponse.FromString(c) for c in _invoke(channel, "Generate", request_)]
    assert chunks[-1].finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)


# JSON through grpcurl (as people debugging the service send it): a wrong type is refused by the
# transcoding client and never reaches the server (grpcurl's message names the field or the value);
# a right type with a bad value is refused by the server, naming the field.
JSON_CASES: list[tuple[str, str, str, str]] = [
    ("list-as-string", "Generate", '{"prompts": "The people"}', "instead got The people"),
    ("number-as-word", "Generate", '{"prompts": [{"text": "a"}], "sampling": {"temperature": "hot"}}', '"hot"'),
    ("negative-unsigned", "Generate", '{"prompts": [{"text": "a"}], "sampling": {"n": -1}}', "n"),
    ("unknown-enum-name", "TrainStep", '{"sequences": [{"token_ids": [5, 6]}], "loss": {"function": "LOSS_FUNCTION_MAGIC"}}', "LOSS_FUNCTION_MAGIC"),
    ("unknown-field", "GetModel", '{"model": "x"}', "model"),
    ("object-as-number", "TrainStep", '{"sequences": [{"token_ids": [5, {"id": 6}]}]}', "expecting number"),
    ("nan-as-string", "Generate", '{"prompts": [{"text": "a"}], "sampling": {"temperature": "NaN"}}', "sampling.temperature"),
    ("infinity-weight", "TrainStep", '{"sequences": [{"token_ids": [5, 6], "loss_weights": [0, "Infinity"]}]}', "loss_weights[1]"),
]


@pytest.mark.parametrize(("rpc", "body", "names"), [c[1:] for c in JSON_CASES], ids=[c[0] for c in JSON_CASES])
def test_json_with_wrong_types_or_values_is_refused(server: ServerProcess, channel: grpc.Channel, trained: None, rpc: str, body: str, names: str) -> None:
    grpcurl = require_tool("grpcurl")
    json.loads(body)  # the bodies are valid JSON: what is wrong is their types or values
    before = _state(channel)
    result = subprocess.run(
        [grpcurl, "-plaintext", "-d", body, server.address, f"tandem.v1.TandemService/{rpc}"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert names in result.stderr + result.stdout
    assert _state(channel) == before
    assert server.health() == health_pb2.HealthCheckResponse.SERVING
