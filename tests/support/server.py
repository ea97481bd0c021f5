"""Start the real server (``python -m service``) as a subprocess on free loopback ports."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
READY_LINE = re.compile(r"tandem: gRPC on (?P<host>[\d.]+):(?P<port>\d+), metrics on http://[\d.]+:(?P<metrics>\d+)/metrics")
SERVICE_NAME = "tandem.v1.TandemService"


@dataclass
class ServerProcess:
    """A running server process and where to reach it."""

    process: subprocess.Popen
    address: str
    metrics_port: int
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def metrics_url(self) -> str:
        """The Prometheus exposition URL."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log(self) -> str:
        """Everything the server printed so far."""
        return self.log_path.read_text(errors="replace")

    def health(self, service: str = SERVICE_NAME, timeout: float = 5.0) -> int:
        """The health status for ``service`` (a HealthCheckResponse.ServingStatus value)."""
        with grpc.insecure_channel(self.address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
            return reply.status

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Wait until the service reports SERVING (a model is loaded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if self.health() == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready within {timeout} s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send ``sig`` and wait for the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(cache_dir: Path, log_dir: Path, *extra_args: str, wait_ready: bool = True, env: dict[str, str] | None = None) -> ServerProcess:
    """Start ``python -m service`` on free ports; by default wait until the start-up model is loaded."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"server-{time.monotonic_ns()}.log"
    args = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0", "--cache-dir", str(cache_dir), *extra_args]
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    log_file = log_path.open("w")
    process = subprocess.Popen(args, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT, env=child_env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        match = READY_LINE.search(log_path.read_text(errors="replace"))
        if match:
            break
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()}")
        time.sleep(0.05)
    else:
        process.kill()
        raise TimeoutError(f"server did not bind within 120 s:\n{log_path.read_text()}")
    server = ServerProcess(process, f"127.0.0.1:{match['port']}", int(match["metrics"]), log_path, args)
    if wait_ready:
        server.wait_ready()
    return server


def require_tool(name: str) -> str:
    """Path of an external tool; skips the test when it is missing, except under CI=true where it fails."""
    import pytest

    path = shutil.which(name) or shutil.which(str(Path.home() / "go" / "bin" / name))
    if path:
        return path
    message = f"{name} is not installed (.ci/run installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)
