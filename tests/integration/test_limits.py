"""Every server limit is enforced with the right code and a message naming the limit.

One server started with small limits: the size of one request over a limit is
INVALID_ARGUMENT, load over a limit is RESOURCE_EXHAUSTED, and the service keeps
serving afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
import time
from contextlib import contextmanager

import grpc
import pytest
from grpc_health.v1 import health_pb2
from tandem.v1 import tandem_pb2 as pb

from tests.support.server import ServerProcess

LIMITS = {
    "max-prompts-per-request": 2,
    "max-samples-per-prompt": 2,
    "max-new-tokens": 1500,
    "max-top-logprobs": 3,
    "max-stop-strings": 2,
    "max-train-sequences": 2,
    "max-train-tokens": 64,
    "max-message-bytes": 64 * 1024,
    "max-concurrent-rpcs": 3,
    "max-queued-generations": 4,
}
LONG = pb.SamplingParams(max_tokens=1500, ignore_eos=True)


@pytest.fixture(scope="module")
def server_flags() -> tuple[str, ...]:
    """This module's server runs with the small LIMITS."""
    return tuple(item for name, value in LIMITS.items() for item in (f"--{name}", str(value)))


@pytest.fixture(autouse=True)
def still_serving(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    server: ServerProcess = request.getfixturevalue("server")
    assert server.health() == health_pb2.HealthCheckResponse.SERVING


def _generate(**fields) -> pb.GenerateRequest:
    fields.setdefault("prompts", [pb.Prompt(text="The people")])
    return pb.GenerateRequest(**fields)


def _sequence(length: int) -> pb.TrainSequence:
    return pb.TrainSequence(token_ids=[5 + i % 50 for i in range(length)])


def _error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        result = call()
        if not isinstance(result, pb.GetModelResponse | pb.TrainStepResponse | pb.ComputeLogprobsResponse):
            list(result)
    return error.value


@pytest.mark.parametrize(
    ("request_", "limit"),
    [
        (_generate(prompts=[pb.Prompt(text="a")] * 3), "max_prompts_per_request"),
        (_generate(sampling=pb.SamplingParams(n=3)), "max_samples_per_prompt"),
        (_generate(sampling=pb.SamplingParams(max_tokens=1501)), "max_new_tokens"),
        (_generate(sampling=pb.SamplingParams(logprobs=4)), "max_top_logprobs"),
        (_generate(sampling=pb.SamplingParams(stop=["x", "y", "z"])), "max_stop_strings"),
        (_generate(prompts=[pb.Prompt(token_ids=pb.TokenIds(ids=[5] * 600))]), "max_seq_length"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_generate_over_a_size_limit_is_invalid_argument(stub, request_: pb.GenerateRequest, limit: str) -> None:
    if limit == "max_seq_length":  # prompt + max_tokens past the model's context
        request_.sampling.max_tokens = 1500
    error = _error(lambda: stub.Generate(request_, timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert limit in error.details()


@pytest.mark.parametrize(
    ("request_", "limit"),
    [
        (pb.TrainStepRequest(sequences=[_sequence(4)] * 3), "max_train_sequences"),
        (pb.TrainStepRequest(sequences=[_sequence(40), _sequence(40)]), "max_train_tokens"),
    ],
    ids=["sequences", "tokens"],
)
def test_train_step_over_a_size_limit_is_invalid_argument(stub, request_: pb.TrainStepRequest, limit: str) -> None:
    before = stub.GetModel(pb.GetModelRequest()).model
    error = _error(lambda: stub.TrainStep(request_, timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert limit in error.details()
    after = stub.GetModel(pb.GetModelRequest()).model
    assert (after.step, after.adapter_version) == (before.step, before.adapter_version)


@pytest.mark.parametrize(
    ("sequences", "limit"),
    [([pb.TokenIds(ids=[5, 6])] * 3, "max_train_sequences"), ([pb.TokenIds(ids=[5] * 40)] * 2, "max_train_tokens")],
    ids=["sequences", "tokens"],
)
def test_compute_logprobs_is_bounded_like_train_step(stub, sequences: list[pb.TokenIds], limit: str) -> None:
    error = _error(lambda: stub.ComputeLogprobs(pb.ComputeLogprobsRequest(sequences=sequences), timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert limit in error.details()


def test_message_over_max_message_bytes_is_refused_by_grpc(stub) -> None:
    error = _error(lambda: stub.Generate(_generate(prompts=[pb.Prompt(text="x" * 70_000)]), timeout=30))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(LIMITS["max-message-bytes"]) in error.details()  # gRPC says "larger than max (70009 vs. 65536)"


@contextmanager
def _running_streams(stub, count: int, request: pb.GenerateRequest) -> Iterator[None]:
    """``count`` Generate calls sent, the first one decoding (the rest may wait behind it); cancelled on exit."""
    calls = [stub.Generate(request, timeout=120) for _ in range(count)]
    try:
        next(calls[0])
        yield
    finally:
        for call in calls:
            call.cancel()


def _eventually_refused(call, within: float = 10.0) -> grpc.RpcError:
    """Repeat ``call`` until the server refuses it (the calls in flight reach the server in their own time)."""
    deadline = time.monotonic() + within
    while True:
        try:
            call()
        except grpc.RpcError as error:
            return error
        assert time.monotonic() < deadline, "the server never refused the call"
        time.sleep(0.05)


def test_calls_over_max_concurrent_rpcs_are_resource_exhausted(server: ServerProcess, stub) -> None:
    with _running_streams(stub, 3, _generate(sampling=LONG)):
        error = _eventually_refused(lambda: stub.GetModel(pb.GetModelRequest(), timeout=30))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_concurrent_rpcs=3" in error.details()
        assert server.health() == health_pb2.HealthCheckResponse.SERVING  # probes are not counted
    assert stub.GetModel(pb.GetModelRequest(), timeout=30).loaded


def test_samples_over_max_queued_generations_are_resource_exhausted(stub) -> None:
    four_samples = _generate(prompts=[pb.Prompt(text="a"), pb.Prompt(text="b")], sampling=pb.SamplingParams(n=2, max_tokens=1500, ignore_eos=True))
    short = _generate(sampling=pb.SamplingParams(max_tokens=4, ignore_eos=True))
    with _running_streams(stub, 1, four_samples):
        error = _error(lambda: stub.Generate(short, timeout=30))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_queued_generations=4" in error.details()
    chunks = list(stub.Generate(short, timeout=60))  # the cancelled samples no longer count
    assert chunks[-1].finish_reason == pb.FINISH_REASON_LENGTH
