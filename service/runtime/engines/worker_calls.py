"""Model work sent to the vLLM engine's process and its reply, as bytes through ``collective_rpc``.

A call is a module-level function of the loaded model (``model_ops.py``)
and its arguments, pickled by the front process; the engine's process runs
it on its ``LoadedModel`` and answers with the result, or the domain error
it raised, and the adapter version after the call. Both processes run this
same code, so functions travel by name. Domain errors travel as their class
and message (their constructors take other arguments than ``args``); any
other exception becomes EngineFailed with its text, logged where it happened.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from service.errors import EngineFailed, InvalidArgument, TandemError

log = logging.getLogger(__name__)


TRAINED_LORA_ID = 1
"""vLLM's id of the trained adapter; saved adapters get ids above it."""


@dataclass(frozen=True)
class BuiltTrainer:
    """What the front process learns when the trainer has been built in the engine's process."""

    eos_token_ids: tuple[int, ...]
    vocab_size: int
    layers: int
    seconds: float


def encode_call(fn: Callable[..., Any], args: tuple) -> bytes:
    """What the front process sends: ``fn(loaded, *args)`` to run in the engine's process."""
    return pickle.dumps((fn, args), protocol=pickle.HIGHEST_PROTOCOL)


def encode_build(spec, model_dir: str, compile_training: bool) -> bytes:
    """What the front process sends to build the trainer (the builder is the engine process's own)."""
    return pickle.dumps((None, (spec, model_dir, compile_training)), protocol=pickle.HIGHEST_PROTOCOL)


def run_encoded(payload: bytes, target: Any, adapter_version: Callable[[], int], fn: Callable[..., Any] | None = None) -> bytes:
    """Run an encoded call on ``target`` (the engine process's LoadedModel or worker; None: nothing built)
    and encode the reply with ``adapter_version()`` after it. ``fn`` replaces an encoded function of None."""
    try:
        if target is None:
            raise EngineFailed("the engine process holds no model: call LoadModel again")
        encoded_fn, args = pickle.loads(payload)
        reply: tuple = ("ok", (fn or encoded_fn)(target, *args))
    except TandemError as error:
        reply = ("error", (type(error), str(error), getattr(error, "field", None)))
    except Exception as error:  # noqa: BLE001 - crosses the process boundary as EngineFailed
        log.exception("model work failed in the engine process")
        reply = ("error", (EngineFailed, f"{type(error).__name__}: {error}", None))
    return pickle.dumps((*reply, adapter_version()), protocol=pickle.HIGHEST_PROTOCOL)


def decode_reply(reply: bytes) -> tuple[Any, int]:
    """(result, adapter version after the call); raises the domain error the call raised."""
    status, value, version = pickle.loads(reply)
    if status == "error":
        raise rebuild_error(*value)
    return value, version


def rebuild_error(cls: type[TandemError], message: str, field: str | None) -> TandemError:
    """The same domain error, with the same message, on this side."""
    error = cls.__new__(cls)
    TandemError.__init__(error, message)
    if issubclass(cls, InvalidArgument):
        error.field = field
    return error
