"""The engine process's fork server (engine_launch.py), with a real fork server and real children.

vLLM is not installed here, so its preloaded module is skipped (the fork server ignores a preload it
cannot import); torch and transformers are preloaded as on a GPU machine.
"""

from __future__ import annotations

import os
import sys

from service.runtime.engines import engine_launch


def report(queue, names: list[str]) -> None:
    """In the child: its parent's pid, the listed environment variables and which preloaded modules it has."""
    queue.put(
        {
            "parent_pid": os.getppid(),
            "environment": {name: os.environ.get(name) for name in names},
            "preloaded": [name for name in ("torch", "transformers.models.auto.modeling_auto") if name in sys.modules],
        }
    )


def run_child(names: list[str]) -> dict:
    """Start ``report`` the way vLLM's launcher starts its engine core, and return what it reported."""
    context = engine_launch._ForkServerContext()
    queue = context.Queue()
    child = context.Process(target=report, name="EngineCore", kwargs={"queue": queue, "names": names})
    child.start()
    try:
        return queue.get(timeout=120)
    finally:
        child.join(30)


def test_a_child_is_forked_from_the_fork_server_with_its_imports_done():
    engine_launch.start_fork_server()
    result = run_child([])
    assert result["parent_pid"] != os.getpid()  # the fork server's child, not this process's
    assert result["preloaded"] == ["torch", "transformers.models.auto.modeling_auto"]


def test_a_child_gets_the_environment_of_the_moment_it_starts_not_the_fork_servers(monkeypatch):
    engine_launch.start_fork_server()
    run_child([])  # the fork server is up before the environment changes
    monkeypatch.setenv("TANDEM_LAUNCH_PROBE", "set after the fork server started")
    monkeypatch.delenv("HOME", raising=False)
    result = run_child(["TANDEM_LAUNCH_PROBE", "HOME"])
    assert result["environment"] == {"TANDEM_LAUNCH_PROBE": "set after the fork server started", "HOME": None}
