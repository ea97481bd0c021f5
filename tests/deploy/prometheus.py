"""A real Prometheus process started with deploy/prometheus's configuration, and its HTTP API."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.server import REPO

DEPLOY_PROMETHEUS = REPO / "deploy" / "prometheus"
SCRAPE_CONFIG = DEPLOY_PROMETHEUS / "prometheus.yml"


class PromQLError(Exception):
    """Prometheus answered a query with an error (bad expression, bad parameters)."""


@dataclass
class PrometheusProcess:
    """A running Prometheus and its HTTP API."""

    process: subprocess.Popen
    url: str
    log_path: Path

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>`` and return its ``data``; PromQLError when Prometheus rejects it."""
        address = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(address, timeout=10) as reply:
                body = json.load(reply)
        except urllib.error.HTTPError as error:
            body = json.load(error)
        if body["status"] != "success":
            raise PromQLError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expression: str) -> list[dict[str, Any]]:
        """An instant query's result vector."""
        return self.api("query", query=expression)["result"]

    def wait_for(self, expression: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Poll ``expression`` until it returns samples."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.query(expression)
            if result:
                return result
            time.sleep(0.5)
        raise TimeoutError(f"no samples for {expression!r} within {timeout} s:\n{self.log_path.read_text(errors='replace')[-3000:]}")

    def stop(self) -> None:
        """Terminate Prometheus and wait for it."""
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def fetch_exposition(metrics_url: str) -> str:
    """A server's /metrics text, now."""
    with urllib.request.urlopen(metrics_url, timeout=10) as reply:
        return reply.read().decode()


def retargeted_config(target: str) -> dict[str, Any]:
    """The deploy scrape configuration with its one static target replaced by ``target`` (nothing else changes)."""
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    (job,) = config["scrape_configs"]
    (static,) = job["static_configs"]
    assert len(static["targets"]) == 1, "the deploy configuration scrapes one server"
    static["targets"] = [target]
    return config


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_prometheus(binary: str, workdir: Path, target: str, timeout: float = 60.0) -> PrometheusProcess:
    """Start Prometheus scraping ``target`` with the deploy configuration and its rule files; wait until ready."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = retargeted_config(target)
    for rule_file in config.get("rule_files", []):
        shutil.copy(DEPLOY_PROMETHEUS / rule_file, workdir / rule_file)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = _free_port()
    log_path = workdir / "prometheus.log"
    args = [
        binary,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with log_path.open("w") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    running = PrometheusProcess(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited with {process.returncode}:\n{log_path.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(f"{running.url}/-/ready", timeout=2) as reply:
                if reply.status == 200:
                    return running
        except OSError:
            pass
        time.sleep(0.2)
    running.stop()
    raise TimeoutError(f"prometheus not ready within {timeout} s:\n{log_path.read_text(errors='replace')}")
