"""Retries with backoff on UNAVAILABLE only, bounded by the deadline; status codes as typed exceptions.

The server here starts empty (``--model none``), so model calls fail with
FAILED_PRECONDITION, a code that must never be retried.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import tandem
from tests.support.server import ServerProcess, start_server


class RetryLog:
    """Collects the retry hook's calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str, float]] = []

    def __call__(self, attempt: int, error: tandem.TandemError, delay: float) -> None:
        self.calls.append((attempt, error.code.name, delay))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class LateServer:
    """An empty server that started a second after a client began calling it."""

    process: ServerProcess
    retries: RetryLog
    first_reply: object

    @property
    def address(self) -> str:
        return self.process.address


@pytest.fixture(scope="module")
def empty_server(tiny_cache: Path, server_logs: Path) -> Iterator[LateServer]:
    """Start ``--model none`` on a fixed port one second after a retrying client's first call."""
    port = free_port()
    started: list[ServerProcess] = []
    starter = threading.Timer(1.0, lambda: started.append(start_server(tiny_cache, server_logs, "--model", "none", "--port", str(port), wait_ready=False)))
    starter.start()
    retries = RetryLog()
    try:
        with tandem.Client(f"127.0.0.1:{port}", retry=tandem.RetryPolicy(max_attempts=200, max_backoff=0.5, on_retry=retries)) as client:
            reply = client.get_model(timeout=120)
    finally:
        starter.join()
    yield LateServer(started[0], retries, reply)
    started[0].stop()


def test_unreachable_server_is_retried_with_growing_backoff_then_unavailable() -> None:
    retries = RetryLog()
    policy = tandem.RetryPolicy(max_attempts=4, initial_backoff=0.1, multiplier=2.0, on_retry=retries)
    started = time.monotonic()
    with tandem.Client(f"127.0.0.1:{free_port()}", retry=policy) as client, pytest.raises(tandem.Unavailable) as caught:
        client.get_model(timeout=30)
    elapsed = time.monotonic() - started
    assert caught.value.code.name == "UNAVAILABLE"
    assert [(attempt, code) for attempt, code, _ in retries.calls] == [(1, "UNAVAILABLE"), (2, "UNAVAILABLE"), (3, "UNAVAILABLE")]
    for (attempt, _, delay), ceiling in zip(retries.calls, (0.1, 0.2, 0.4), strict=True):
        assert ceiling / 2 <= delay <= ceiling, f"retry {attempt} waited {delay}"
    assert elapsed >= sum(delay for _, _, delay in retries.calls)


def test_retries_stop_at_the_deadline() -> None:
    policy = tandem.RetryPolicy(max_attempts=1000, initial_backoff=0.05, max_backoff=0.2)
    started = time.monotonic()
    with tandem.Client(f"127.0.0.1:{free_port()}", retry=policy) as client, pytest.raises(tandem.Unavailable):
        client.get_model(timeout=1.0)
    assert time.monotonic() - started < 2.0


def test_retries_reach_a_server_that_comes_up_late(empty_server: LateServer) -> None:
    assert empty_server.retries.calls, "the first attempts found nothing listening"
    assert {code for _, code, _ in empty_server.retries.calls} == {"UNAVAILABLE"}
    assert empty_server.first_reply is None, "then GetModel got through: no model loaded"


def test_failed_precondition_is_typed_and_not_retried(empty_server: LateServer) -> None:
    retries = RetryLog()
    with tandem.Client(empty_server.address, retry=tandem.RetryPolicy(on_retry=retries)) as client:
        assert client.get_model() is None
        with pytest.raises(tandem.FailedPrecondition, match="LoadModel"):
            client.generate("hi")
        with pytest.raises(tandem.FailedPrecondition):
            client.train_step([{"prompt": "a", "completion": " b"}])
        assert client.unload_model() is False
    assert retries.calls == []


async def test_async_client_raises_the_same_types(empty_server: LateServer) -> None:
    async with tandem.AsyncClient(empty_server.address) as client:
        assert await client.get_model() is None
        with pytest.raises(tandem.FailedPrecondition):
            await client.compute_logprobs([[1, 2, 3]])
    async with tandem.AsyncClient(f"127.0.0.1:{free_port()}", retry=tandem.RetryPolicy(max_attempts=2, initial_backoff=0.05)) as client:
        with pytest.raises(tandem.Unavailable):
            await client.get_model()


def test_every_status_code_has_its_exception_class() -> None:
    import grpc

    from tandem.errors import error_for

    for code in grpc.StatusCode:
        if code in (grpc.StatusCode.OK, grpc.StatusCode.UNKNOWN):
            continue
        error = error_for(code, "details")
        assert type(error) is not tandem.TandemError and isinstance(error, tandem.TandemError)
        assert error.code == code and error.details == "details"
