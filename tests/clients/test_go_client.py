"""The Go module: `go vet`, `go test` against a live server, and its example program."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests.support.server import REPO, ServerProcess, require_tool

GO_MODULE = REPO / "clients" / "go"


def go(*args: str, address: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the go tool in clients/go (module downloads come from the proxy; go.sum pins them)."""
    env = {**os.environ, "GOFLAGS": os.environ.get("GOFLAGS", "-buildvcs=false")}
    if address is not None:
        env["TANDEM_ADDR"] = address
    result = subprocess.run([require_tool("go"), *args], cwd=GO_MODULE, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"go {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.timeout(900)
def test_go_vet() -> None:
    go("vet", "./...")


@pytest.mark.timeout(900)
def test_go_test_against_the_live_server(server: ServerProcess) -> None:
    result = go("test", "-count=1", "-v", "./...", address=server.address)
    passed = set(re.findall(r"--- PASS: (\w+)", result.stdout))
    assert {"TestLoadGenerateTrainGenerate", "TestStoppingAStreamEarlyCancelsIt", "TestDeadlineExceeded"} <= passed
    assert "--- SKIP" not in result.stdout, "TANDEM_ADDR reached the tests"


@pytest.mark.timeout(900)
def test_example_program_runs_the_loop(server: ServerProcess) -> None:
    result = go("run", "./examples/loop", "-target", server.address, "-steps", "3")
    lines = result.stdout.splitlines()
    assert lines[0] == "loaded tandem/tiny (ENGINE_KIND_TRANSFORMERS engine)"
    assert lines[1].startswith("before: adapter version 0: ")
    assert [line.split(":")[0] for line in lines[2:5]] == ["step 1", "step 2", "step 3"]
    assert lines[5].startswith("after: adapter version 3: ")
    assert "LOAD_PHASE_READY" in result.stderr
