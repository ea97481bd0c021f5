"""Running the client examples as their users do: as scripts, with the test's Python."""

from __future__ import annotations

import subprocess
import sys

from tests.support.server import REPO

EXAMPLES = REPO / "clients" / "python" / "examples"


def run_example(script: str, *args: str, timeout: float) -> str:
    """Run ``clients/python/examples/<script>``; its output, or a failure showing it."""
    done = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert done.returncode == 0, f"{script} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout
