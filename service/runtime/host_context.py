"""What starting a model host needs (kept apart from ``host.py``, which imports the hosts lazily)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service.runtime.device_loop import DeviceLoop
from service.runtime.specs import LoadSpec


@dataclass(frozen=True)
class HostContext:
    """What starting a host needs."""

    spec: LoadSpec
    model_dir: Path
    tokenizer: object
    device_loop: DeviceLoop
    """The server's device loop (the local host runs on it)."""
    report: Callable[..., None]
    """report(phase: LoadPhase, message: str, done=0, total=0, unit="")"""
    on_dead: Callable[[], None]
    """Called on the event loop when the engine's process dies."""
