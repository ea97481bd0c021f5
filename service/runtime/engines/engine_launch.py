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
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from multiprocessing import forkserver
from typing import Any

PRELOAD = ("torch", "transformers.models.auto.modeling_auto", "vllm.v1.engine.core")
"""What the fork server imports once (none of it initializes CUDA)."""


def start_fork_server() -> None:
    """Start the fork server if it is not running (it imports PRELOAD in its own process; this returns at once)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))
    forkserver.ensure_running()


def use_fork_server() -> None:
    """Make vLLM start its engine core from the fork server (started here if it is not running)."""
    import vllm.v1.engine.utils as engine_utils

    start_fork_server()
    engine_utils.get_mp_context = _ForkServerContext


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
