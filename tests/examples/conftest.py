"""Fixtures for running the client examples against a real server of their own."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import REPO, ServerProcess, start_server

EXAMPLES = REPO / "clients" / "python" / "examples"


@pytest.fixture
def example_server(tiny_cache: Path, server_logs: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server with the tiny model and a checkpoint root of the test's own."""
    process = start_server(tiny_cache, server_logs, "--checkpoint-root", str(tmp_path / "checkpoints"))
    yield process
    process.stop()


def run_example(script: str, *args: str, timeout: float) -> str:
    """Run ``clients/python/examples/<script>`` with the test's Python; its output, or a failure showing it."""
    done = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert done.returncode == 0, f"{script} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout
