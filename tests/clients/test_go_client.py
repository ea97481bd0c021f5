"""The Go module: `go vet`, `go test` against a live server, and its example program."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients.helpers import start_servers
from tests.support.certs import start_mutual_tls_server
from tests.support.server import REPO, ServerProcess, require_tool

GO_MODULE = REPO / "clients" / "go"
TOKEN = "go-client-token"
REPLICA_TEST = "TestSamplerReplicasSpreadAndSurviveAKill"


def go(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the go tool in clients/go (module downloads come from the proxy; go.sum pins them)."""
    env = {**os.environ, "GOFLAGS": os.environ.get("GOFLAGS", "-buildvcs=false"), **(env or {})}
    result = subprocess.run([require_tool("go"), *args], cwd=GO_MODULE, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"go {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def secure_env(tiny_cache: Path, server_logs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A server demanding mutual TLS and a token (no model), described in the variables the Go test reads."""
    process, authority = start_mutual_tls_server(tiny_cache, server_logs, tmp_path_factory.mktemp("go-pki"), TOKEN)
    client_pem = authority.issue("go-client", server=False)
    yield {
        "TANDEM_SECURE_ADDR": process.address,
        "TANDEM_CA_FILE": str(authority.pem.cert),
        "TANDEM_CERT_FILE": str(client_pem.cert),
        "TANDEM_KEY_FILE": str(client_pem.key),
        "TANDEM_TOKEN": TOKEN,
    }
    process.stop()


@pytest.mark.timeout(900)
def test_go_vet() -> None:
    go("vet", "./...")


@pytest.mark.timeout(900)
def test_go_test_against_live_servers(server: ServerProcess, secure_env: dict[str, str]) -> None:
    result = go("test", "-count=1", "-v", "-skip", REPLICA_TEST, "./...", env={"TANDEM_ADDR": server.address, **secure_env})
    passed = set(re.findall(r"--- PASS: (\w+)", result.stdout))
    assert {"TestLoadGenerateTrainGenerate", "TestStoppingAStreamEarlyCancelsIt", "TestDeadlineExceeded", "TestMutualTLSAndToken", "TestTokenizeDetokenize"} <= passed
    assert "--- SKIP" not in result.stdout, "the servers' addresses reached the tests"


@pytest.mark.timeout(900)
def test_go_client_spreads_over_sampler_replicas_and_survives_a_kill(tiny_cache: Path, server_logs: Path) -> None:
    """The Go test kills the second server while it decodes; every call ends on the first."""
    replicas = start_servers(2, tiny_cache, server_logs)
    try:
        env = {
            "TANDEM_SAMPLERS": ",".join(server.address for server in replicas),
            "TANDEM_VICTIM_PID": str(replicas[1].process.pid),
            "TANDEM_VICTIM_METRICS": replicas[1].metrics_url,
        }
        result = go("test", "-count=1", "-v", "-run", f"^{REPLICA_TEST}$", ".", env=env)
        assert f"--- PASS: {REPLICA_TEST}" in result.stdout
        assert replicas[1].process.wait(timeout=10) == -signal.SIGKILL and replicas[0].process.poll() is None
    finally:
        for server in replicas:
            server.stop()


@pytest.mark.timeout(900)
def test_example_program_runs_the_loop(server: ServerProcess) -> None:
    result = go("run", "./examples/loop", "-target", server.address, "-steps", "3", env={"TANDEM_TOKEN": ""})
    lines = result.stdout.splitlines()
    assert lines[0] == "loaded tandem/tiny (ENGINE_KIND_TRANSFORMERS engine)"
    assert lines[1].startswith("before: adapter version 0: ")
    assert [line.split(":")[0] for line in lines[2:5]] == ["step 1", "step 2", "step 3"]
    assert lines[5].startswith("after: adapter version 3: ")
    assert "LOAD_PHASE_READY" in result.stderr
