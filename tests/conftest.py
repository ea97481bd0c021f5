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
def server_flags() -> tuple[str, ...]:
    """Flags for the module's server beyond the loopback ports and cache: none by default.

    A test module that needs a server configured its own way overrides this
    fixture (it may use other fixtures, such as a temporary directory) and
    then uses ``server`` and ``stub`` as every other module does.
    """
    return ()


@pytest.fixture(scope="module")
def server(tiny_cache: Path, server_logs: Path, server_flags: tuple[str, ...]) -> Iterator[ServerProcess]:
    """A real server on loopback with the tiny 4-bit model loaded and ``server_flags``, shared by one test module."""
    process = start_server(tiny_cache, server_logs, *server_flags)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[tandem_pb2_grpc.TandemServiceStub]:
    """A synchronous stub on the module's server."""
    with grpc.insecure_channel(server.address) as channel:
        yield tandem_pb2_grpc.TandemServiceStub(channel)
