"""Small helpers for the client tests: reading the server's metrics, waiting for a condition, starting replicas."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.server import ServerProcess, start_server


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    """The value of one sample of the server's /metrics (0 when the series does not exist yet)."""
    with urllib.request.urlopen(server.metrics_url, timeout=5) as reply:
        text = reply.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items()):
                return sample.value
    return 0.0


def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def start_servers(count: int, cache_dir: Path, log_dir: Path, *extra_args: str) -> list[ServerProcess]:
    """Start ``count`` servers side by side (they load their models at the same time), then wait until all are ready."""
    servers = [start_server(cache_dir, log_dir, *extra_args, wait_ready=False) for _ in range(count)]
    for server in servers:
        server.wait_ready()
    return servers


def sampling(servers: list[ServerProcess]) -> list[ServerProcess]:
    """The servers with samples in their engine right now."""
    return [server for server in servers if metric(server, "tandem_running_requests") > 0]
