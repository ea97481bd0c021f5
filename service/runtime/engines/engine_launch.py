"""vLLM's engine-core process forked from a fork server whose heavy imports are already done.

vLLM starts its engine core as a new interpreter (``spawn``; Tandem never lets it
``fork`` the server, whose gRPC threads the child would inherit), and that
interpreter imports torch, transformers and vLLM again before it loads a weight:
16 s of every LoadModel on the H200 (BENCHMARKS.md, "Where LoadModel's time goes").
Python's ``forkserver`` start method instead forks each child from one
single-threaded process, started once, that has imported PRELOAD; the child
gets those modules for the cost of a fork.

- The fork server starts when the server does (``start_fork_server``, called by
  ``python -m service`` where vLLM can run) and imports in its own process while
  the server starts up and takes its first calls; ``VllmHost`` also starts it
  when it is not running (tests, benchmarks, a fork server that died).
- A child runs with the environment the server process has when the engine
  starts (``_run_with_environment``), as a spawned one would, not the fork
  server's from start-up.
- PEFT and bitsandbytes are not preloaded: importing bitsandbytes reads the GPU's
  compute capability, which initializes CUDA, and a process forked from one with
  CUDA initialized cannot use CUDA. The engine's process imports them itself.

vLLM 0.24 has no setting for this (``VLLM_WORKER_MULTIPROC_METHOD`` accepts spawn
or fork only), so ``use_fork_server`` replaces the context getter its
engine-core launcher calls (``vllm.v1.engine.utils.get_mp_context``) for this process.

The same holds for vLLM's model-class inspection: the first time a
``VLLM_CACHE_ROOT`` sees an architecture, vLLM's model registry inspects the
class in a new interpreter (``python -m vllm.model_executor.models.registry``,
so that the server process never initializes CUDA), which imports torch and
vLLM again: 19-26 s of a cold LoadModel on the H200 (BENCHMARKS.md).
``use_fork_server`` also replaces that runner
(``vllm.model_executor.models.registry._run_in_subprocess``) with one that runs
the same function in a child of the fork server and takes its result back over
a pipe; the result is cached under ``VLLM_CACHE_ROOT`` as before.
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
from collections.abc import Callable
from multiprocessing import forkserver
from multiprocessing.connection import Connection
from typing import Any, TypeVar

T = TypeVar("T")

PRELOAD = ("torch", "transformers.models.auto.modeling_auto", "vllm.v1.engine.core")
"""What the fork server imports once (none of it initializes CUDA)."""
FORK_SERVER_VARIABLE = "TANDEM_ENGINE_FORK_SERVER"


def start_fork_server() -> None:
    """Start the fork server if it is not running (it imports PRELOAD in its own process; this returns at once)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))
    forkserver.ensure_running()


def fork_server_enabled() -> bool:
    """False when ``TANDEM_ENGINE_FORK_SERVER=off``: vLLM then spawns its engine core and inspection process
    itself, as it does on its own (a way back should a platform's driver refuse the fork server's children)."""
    return os.environ.get(FORK_SERVER_VARIABLE, "on") != "off"


def use_fork_server() -> None:
    """Make vLLM start its engine core, and run its model-class inspection, in children of the fork server
    (started here if it is not running); nothing when ``fork_server_enabled`` says no."""
    if not fork_server_enabled():
        return
    import vllm.model_executor.models.registry as registry
    import vllm.v1.engine.utils as engine_utils

    start_fork_server()
    engine_utils.get_mp_context = _ForkServerContext
    registry._run_in_subprocess = run_in_child


def run_in_child(fn: Callable[[], T]) -> T:
    """``fn()`` in a child of the fork server, with this process's environment; its result, or a RuntimeError
    with the child's traceback (``fn`` crosses by cloudpickle, so a lambda will do, as vLLM's registry passes)."""
    import cloudpickle

    receiver, sender = multiprocessing.get_context("forkserver").Pipe(duplex=False)
    child = _ForkServerContext().Process(target=_call_and_send, name="TandemInspect", kwargs={"pickled": cloudpickle.dumps(fn), "sender": sender})
    child.start()
    sender.close()
    try:
        succeeded, answer = receiver.recv()
    except EOFError:
        child.join()
        raise RuntimeError(f"a fork-server child ended without an answer (exit status {child.exitcode})") from None
    finally:
        receiver.close()
    child.join()
    if not succeeded:
        raise RuntimeError(f"error raised in a fork-server child:\n{answer}")
    return answer


def _call_and_send(pickled: bytes, sender: Connection) -> None:
    """In the child: vLLM's plugins (as its own inspection process loads them, where vLLM is installed), then
    the function; (True, result) or (False, traceback) goes back."""
    import pickle

    try:
        try:
            from vllm.plugins import load_general_plugins
        except ImportError:  # no vLLM (CPU tests): nothing to load
            pass
        else:
            load_general_plugins()
        answer = (True, pickle.loads(pickled)())
    except BaseException:  # noqa: BLE001 - everything goes back to the caller as text
        answer = (False, traceback.format_exc())
    sender.send(answer)
    sender.close()


class _ForkServerContext:
    """The part of a multiprocessing context vLLM's launcher uses: fork-server processes that take this
    process's environment at their start; anything else is the fork-server context's own."""

    def __init__(self) -> None:
        self._context = multiprocessing.get_context("forkserver")

    def Process(self, target: Callable[..., Any], name: str | None = None, kwargs: dict | None = None, **options: Any):  # noqa: N802 - multiprocessing's name
        """A process that runs ``target(**kwargs)`` with this process's environment of now."""
        return self._context.Process(target=_run_with_environment, name=name, args=(dict(os.environ), target), kwargs=kwargs or {}, **options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def _run_with_environment(environment: dict[str, str], target: Callable[..., Any], **kwargs: Any) -> None:
    """In the child: the parent's environment, then the target."""
    os.environ.clear()
    os.environ.update(environment)
    target(**kwargs)
