"""Property-based fuzzing of request messages against the live server.

Whatever the fields hold (NaN, huge integers, out-of-vocabulary ids, any
text, arbitrary bytes), the server answers with a deliberate status, never
INTERNAL or UNKNOWN, and stays SERVING. Each call has a short deadline: a
valid but expensive request may run out of time, which is the client's doing.
100 examples per test by default; TANDEM_FUZZ_EXAMPLES=2000 for a longer hunt.
"""

from __future__ import annotations

import os
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tandem.v1 import tandem_pb2 as pb

from tests.support.server import ServerProcess

UINT32 = st.integers(0, 2**32 - 1)
UINT64 = st.integers(0, 2**64 - 1)
TOKEN = st.one_of(st.integers(0, 1100), UINT32)
FLOAT = st.floats(width=32)  # NaN and infinities included
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)  # protobuf strings cannot hold lone surrogates
UNSAFE_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
STREAMING = {"Generate"}


def _optional(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.none(), strategy)


def _message(cls, **field_strategies: st.SearchStrategy) -> st.SearchStrategy:
    """A message with any subset of the given fields set."""
    fields = st.fixed_dictionaries({}, optional={name: strategy for name, strategy in field_strategies.items()})
    return fields.map(lambda values: cls(**values))


prompts = st.one_of(
    st.builds(pb.Prompt),
    TEXT.map(lambda text: pb.Prompt(text=text)),
    st.lists(TOKEN, max_size=12).map(lambda ids: pb.Prompt(token_ids=pb.TokenIds(ids=ids))),
)
sampling = _message(
    pb.SamplingParams,
    n=st.one_of(st.integers(0, 3), UINT32),
    temperature=FLOAT,
    top_p=FLOAT,
    top_k=UINT32,
    min_p=FLOAT,
    max_tokens=st.one_of(st.integers(0, 8), UINT32),
    stop=st.lists(TEXT, max_size=3),
    stop_token_ids=st.lists(TOKEN, max_size=3),
    seed=UINT64,
    logprobs=st.one_of(st.integers(0, 5), UINT32),
    ignore_eos=st.booleans(),
)
generate = st.builds(pb.GenerateRequest, prompts=st.lists(prompts, max_size=3), sampling=sampling, adapter=st.one_of(st.just(""), st.just("base"), TEXT))
sequences = _message(
    pb.TrainSequence,
    token_ids=st.lists(TOKEN, max_size=10),
    prompt=TEXT,
    completion=TEXT,
    add_eos=st.booleans(),
    loss_weights=st.lists(FLOAT, max_size=10),
    advantage=FLOAT,
    advantages=st.lists(FLOAT, max_size=10),
    sampler_logprobs=st.lists(FLOAT, max_size=10),
)
train = st.builds(
    pb.TrainStepRequest,
    sequences=st.lists(sequences, max_size=3),
    loss=_message(pb.LossConfig, function=st.integers(-2, 6), clip_low=FLOAT, clip_high=FLOAT),
    optimizer=_message(pb.OptimizerConfig, learning_rate=FLOAT, beta1=FLOAT, beta2=FLOAT, eps=FLOAT, weight_decay=FLOAT, max_grad_norm=FLOAT),
    accumulate=st.booleans(),
)
logprobs = st.builds(
    pb.ComputeLogprobsRequest,
    sequences=st.lists(st.lists(TOKEN, max_size=10).map(lambda ids: pb.TokenIds(ids=ids)), max_size=3),
    adapter=st.one_of(st.just(""), st.just("base"), TEXT),
)
typed_calls = st.one_of(
    generate.map(lambda r: ("Generate", r)),
    train.map(lambda r: ("TrainStep", r)),
    logprobs.map(lambda r: ("ComputeLogprobs", r)),
    TEXT.map(lambda name: ("LoadAdapter", pb.LoadAdapterRequest(name=name))),
)
raw_calls = st.tuples(st.sampled_from(["Generate", "TrainStep", "ComputeLogprobs", "GetModel", "ListAdapters"]), st.binary(max_size=48))


def _call(channel: grpc.Channel, rpc: str, request: Any) -> None:
    method = f"/tandem.v1.TandemService/{rpc}"
    serialize = None if isinstance(request, bytes) else type(request).SerializeToString
    if rpc in STREAMING:
        list(channel.unary_stream(method, request_serializer=serialize)(request, timeout=3))
    else:
        channel.unary_unary(method, request_serializer=serialize)(request, timeout=10)


@pytest.fixture(scope="module")
def channel(server: ServerProcess):
    with grpc.insecure_channel(server.address) as channel:
        yield channel


def _check(server: ServerProcess, channel: grpc.Channel, rpc: str, request: Any) -> None:
    try:
        _call(channel, rpc, request)
    except grpc.RpcError as error:
        assert error.code() not in UNSAFE_CODES, f"{rpc}({request!r}) -> {error.code()}: {error.details()}"
    assert server.health() == health_pb2.HealthCheckResponse.SERVING


FUZZ = settings(max_examples=int(os.environ.get("TANDEM_FUZZ_EXAMPLES", "100")), deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(call=typed_calls)
def test_typed_requests_never_fail_internally(server: ServerProcess, channel: grpc.Channel, call: tuple[str, Any]) -> None:
    _check(server, channel, *call)


@FUZZ
@given(call=raw_calls)
def test_arbitrary_bytes_never_fail_internally(server: ServerProcess, channel: grpc.Channel, call: tuple[str, bytes]) -> None:
    _check(server, channel, *call)
