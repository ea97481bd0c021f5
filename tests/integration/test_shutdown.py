"""SIGTERM while a Generate stream is in flight: the stream drains within the grace period and the process exits 0."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import grpc
import pytest
from tandem.v1 import tandem_pb2 as pb
from tandem.v1 import tandem_pb2_grpc

from tests.support.server import start_server


def _stream(address: str, max_tokens: int) -> tuple[grpc.Channel, grpc.Call]:
    channel = grpc.insecure_channel(address)
    request = pb.GenerateRequest(prompts=[pb.Prompt(text="The people")], sampling=pb.SamplingParams(max_tokens=max_tokens, ignore_eos=True))
    return channel, tandem_pb2_grpc.TandemServiceStub(channel).Generate(request, timeout=120)


def test_sigterm_lets_a_running_stream_finish_then_exits_0(tiny_cache: Path, server_logs: Path) -> None:
    server = start_server(tiny_cache, server_logs, "--grace-seconds", "30")
    channel, call = _stream(server.address, max_tokens=100)
    first = next(call)
    server.process.send_signal(signal.SIGTERM)
    rest = list(call)  # no error: the call finishes within the grace period
    assert len(first.token_ids) + sum(len(c.token_ids) for c in rest) == 100
    assert rest[-1].finish_reason == pb.FINISH_REASON_LENGTH
    with pytest.raises(grpc.RpcError):  # no new calls while draining / after stop
        tandem_pb2_grpc.TandemServiceStub(channel).GetModel(pb.GetModelRequest(), timeout=5)
    assert server.process.wait(30) == 0
    channel.close()
    assert "shutting down" in server.log() and "stopped" in server.log()


def test_sigterm_ends_a_stream_longer_than_the_grace_period_and_exits_0_in_time(tiny_cache: Path, server_logs: Path) -> None:
    server = start_server(tiny_cache, server_logs, "--grace-seconds", "1")
    channel, call = _stream(server.address, max_tokens=1900)
    next(call)
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    with pytest.raises(grpc.RpcError) as error:
        list(call)
    assert error.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    assert server.process.wait(30) == 0
    assert time.monotonic() - signalled < 1 + 10  # grace plus stopping the device loop, far below the 1900-token stream
    channel.close()
