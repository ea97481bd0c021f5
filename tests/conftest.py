"""Session fixtures: the built-in tiny model (made once), real servers, and stubs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tandem.v1 import tandem_pb2_grpc

from tests.support.server import ServerProcess, start_server


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache directory holding the built-in tiny model, made once per test session."""
    from service.tiny_model import ensure_builtin_model

    cache = Path(os.environ.get("TANDEM_TEST_CACHE") or tmp_path_factory.mktemp("tandem-cache"))
    ensure_builtin_model("tandem/tiny", cache)
    return cache


@pytest.fixture(scope="session")
def server_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where server subprocesses write their logs."""
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="module")
def server(tiny_cache: Path, server_logs: Path) -> Iterator[ServerProcess]:
    """A real server on loopback with the tiny 4-bit model loaded, shared by one test module."""
    process = start_server(tiny_cache, server_logs)
    yield process
    process.stop()


@pytest.fixture
def fresh_server(tiny_cache: Path, server_logs: Path) -> Iterator[ServerProcess]:
    """A real server of the test's own, for tests that change or end its state."""
    process = start_server(tiny_cache, server_logs)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[tandem_pb2_grpc.TandemServiceStub]:
    """A synchronous stub on the module's server."""
    with grpc.insecure_channel(server.address) as channel:
        yield tandem_pb2_grpc.TandemServiceStub(channel)
