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
from typing import Any

from service.errors import EngineFailed, InvalidArgument, TandemError

log = logging.getLogger(__name__)


def encode_call(fn: Callable[..., Any], args: tuple) -> bytes:
    """What the front process sends: ``fn(loaded, *args)`` to run in the engine's process."""
    return pickle.dumps((fn, args), protocol=pickle.HIGHEST_PROTOCOL)


def run_encoded(loaded, payload: bytes) -> bytes:
    """Run an encoded call on ``loaded`` (the engine process's LoadedModel, or None) and encode the reply."""
    try:
        if loaded is None:
            raise EngineFailed("the engine process holds no model: call LoadModel again")
        fn, args = pickle.loads(payload)
        reply: tuple = ("ok", fn(loaded, *args))
    except TandemError as error:
        reply = ("error", (type(error), str(error), getattr(error, "field", None)))
    except Exception as error:  # noqa: BLE001 - crosses the process boundary as EngineFailed
        log.exception("model work failed in the engine process")
        reply = ("error", (EngineFailed, f"{type(error).__name__}: {error}", None))
    version = 0 if loaded is None else loaded.state.adapter_version
    return pickle.dumps((*reply, version), protocol=pickle.HIGHEST_PROTOCOL)


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
