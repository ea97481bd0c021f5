"""Fixtures for running the client examples against a real server of their own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import ServerProcess, start_server


@pytest.fixture
def example_server(tiny_cache: Path, server_logs: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server with the tiny model and a checkpoint root of the test's own."""
    process = start_server(tiny_cache, server_logs, "--checkpoint-root", str(tmp_path / "checkpoints"))
    yield process
    process.stop()
