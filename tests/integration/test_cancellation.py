"""A client's cancel or deadline stops the engine work of its call; a TrainStep is all or nothing.

The engine's load is read from the ``tandem_running_requests`` gauge on the
metrics port, as Prometheus would.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2
from tandem.v1 import tandem_pb2 as pb

from tests.support.server import ServerProcess

LONG_GENERATE = pb.GenerateRequest(
    prompts=[pb.Prompt(text="The people"), pb.Prompt(text="a long story")],
    sampling=pb.SamplingParams(n=2, max_tokens=1500, ignore_eos=True),
)
TRAIN = pb.TrainStepRequest(
    sequences=[pb.TrainSequence(prompt="The people", completion=" say hello")], optimizer=pb.OptimizerConfig(learning_rate=1e-3)
)


def gauge(server: ServerProcess, name: str) -> float:
    """One unlabelled gauge from the metrics port."""
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not exported")


def wait_for(condition: Callable[[], bool], within: float) -> float:
    """Seconds until ``condition()`` held; fails after ``within`` seconds."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < within, f"condition not met within {within} s"
        time.sleep(0.02)
    return time.monotonic() - started


def _idle(server: ServerProcess) -> bool:
    return gauge(server, "tandem_running_requests") == 0 and gauge(server, "tandem_queue_depth") == 0


def _first_chunk_then(server: ServerProcess, call) -> None:
    next(call)
    assert gauge(server, "tandem_running_requests") > 0


def test_cancelled_generate_stops_its_samples_within_a_second(server: ServerProcess, stub) -> None:
    call = stub.Generate(LONG_GENERATE, timeout=120)
    _first_chunk_then(server, call)
    call.cancel()
    assert wait_for(lambda: gauge(server, "tandem_running_requests") == 0, within=1.0) < 1.0
    with pytest.raises(grpc.RpcError) as error:
        list(call)
    assert error.value.code() == grpc.StatusCode.CANCELLED


def test_expired_deadline_stops_its_samples_within_a_second(server: ServerProcess, stub) -> None:
    call = stub.Generate(LONG_GENERATE, timeout=3)
    _first_chunk_then(server, call)
    with pytest.raises(grpc.RpcError) as error:
        list(call)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(lambda: gauge(server, "tandem_running_requests") == 0, within=1.0)


def test_other_streams_go_on_when_one_is_cancelled(server: ServerProcess, stub) -> None:
    doomed = stub.Generate(LONG_GENERATE, timeout=120)
    survivor = stub.Generate(pb.GenerateRequest(prompts=[pb.Prompt(text="hi")], sampling=pb.SamplingParams(max_tokens=20, ignore_eos=True)), timeout=120)
    next(doomed)
    doomed.cancel()
    chunks = list(survivor)
    assert sum(len(c.token_ids) for c in chunks) == 20
    assert chunks[-1].finish_reason == pb.FINISH_REASON_LENGTH


def _model(stub) -> pb.ModelInfo:
    return stub.GetModel(pb.GetModelRequest(), timeout=30).model


def test_train_step_whose_deadline_passes_while_queued_is_not_applied(server: ServerProcess, stub) -> None:
    before = _model(stub)
    generation = stub.Generate(LONG_GENERATE, timeout=120)  # the step waits for running samples to finish
    next(generation)
    with pytest.raises(grpc.RpcError) as error:
        stub.TrainStep(TRAIN, timeout=0.5)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    generation.cancel()
    wait_for(lambda: _idle(server), within=5.0)
    after = _model(stub)
    assert (after.step, after.adapter_version, after.accumulated_micro_batches) == (before.step, before.adapter_version, before.accumulated_micro_batches)


@pytest.mark.parametrize("accumulate", [False, True], ids=["step", "accumulate"])
def test_train_steps_cut_off_at_any_point_are_all_or_nothing(server: ServerProcess, stub, accumulate: bool) -> None:
    """Deadlines from 1 ms to 80 ms land before, during and after the step; each either counts fully or not at all."""
    before = _model(stub)
    request = pb.TrainStepRequest()
    request.CopyFrom(TRAIN)
    request.accumulate = accumulate
    succeeded = 0
    for attempt in range(16):
        try:
            stub.TrainStep(request, timeout=0.001 + 0.005 * attempt)
            succeeded += 1
        except grpc.RpcError as error:
            assert error.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
    wait_for(lambda: _idle(server), within=10.0)
    after = _model(stub)
    if accumulate:
        applied = after.accumulated_micro_batches - before.accumulated_micro_batches
        assert (after.step, after.adapter_version) == (before.step, before.adapter_version)
        stub.TrainStep(TRAIN, timeout=60)  # apply the accumulated micro-batches: later tests start clean
    else:
        applied = after.step - before.step
        assert after.adapter_version - before.adapter_version == applied
        assert after.accumulated_micro_batches == before.accumulated_micro_batches
    assert succeeded <= applied <= 16
    reply = stub.TrainStep(TRAIN, timeout=60)
    assert reply.outcome == pb.STEP_OUTCOME_APPLIED
    assert reply.step == _model(stub).step
    assert server.health() == health_pb2.HealthCheckResponse.SERVING
