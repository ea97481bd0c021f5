"""A fresh `python -m service` (empty cache: the built-in model is made, then loaded) prints only
the project's own lines until the model is ready: no dependency warning, no traceback."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.server import start_server

SUSPECT = re.compile(r"warn|traceback|error|exception|fail|deprecat", re.IGNORECASE)
ACCEPTED: tuple[re.Pattern[str], ...] = ()
"""Suspect-looking lines the project has decided to accept, each with a reason; none today."""
READY = re.compile(r"model tandem/tiny ready \(transformers engine, [\d.]+ s\)")


def test_a_fresh_start_prints_nothing_that_looks_like_a_failure(tmp_path: Path) -> None:
    # PYTHONWARNINGS empty: the warning filters a user's shell has, not a test runner's.
    server = start_server(tmp_path / "cache", tmp_path / "logs", env={"PYTHONWARNINGS": ""})
    try:
        output = server.log()
    finally:
        assert server.stop() == 0
    ready = READY.search(output)
    assert ready, output
    head = output[: ready.end()]
    assert "\r" not in head, f"no progress bars in the log:\n{head}"
    lines = head.splitlines()
    assert lines[0].startswith("tandem: gRPC on 127.0.0.1:"), lines[0]
    suspect = [line for line in lines if SUSPECT.search(line) and not any(p.search(line) for p in ACCEPTED)]
    assert not suspect, head
