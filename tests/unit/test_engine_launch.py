"""The engine process's fork server (engine_launch.py), with a real fork server and real children.

vLLM is not installed here, so its preloaded module is skipped (the fork server ignores a preload it
cannot import); torch and transformers are preloaded as on a GPU machine.
"""

from __future__ import annotations

import os
import sys

import pytest

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


def test_a_function_runs_in_a_fork_server_child_and_its_result_comes_back():
    offset = 7  # captured by the lambda, as vLLM's registry captures its model entry
    pid, value = engine_launch.run_in_child(lambda: (os.getpid(), offset * 6))
    assert pid != os.getpid()
    assert value == 42


def test_an_error_in_the_child_comes_back_with_its_traceback():
    def fails() -> None:
        raise ValueError("no such architecture")

    with pytest.raises(RuntimeError, match="ValueError: no such architecture"):
        engine_launch.run_in_child(fails)


def test_a_child_that_dies_without_answering_is_an_error_not_a_hang():
    with pytest.raises(RuntimeError, match=r"ended without an answer \(exit status 3\)"):
        engine_launch.run_in_child(lambda: os._exit(3))


def test_the_fork_server_can_be_turned_off_by_the_environment(monkeypatch):
    monkeypatch.delenv(engine_launch.FORK_SERVER_VARIABLE, raising=False)
    assert engine_launch.fork_server_enabled()
    monkeypatch.setenv(engine_launch.FORK_SERVER_VARIABLE, "off")
    assert not engine_launch.fork_server_enabled()
