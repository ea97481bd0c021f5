"""Saved adapters held ready to use: loaded on first use, a bounded number at once, least recently used evicted.

Each loaded model has two sets of slots, each bounded by LoadModel's
``max_loras``: the engine's (Generate from a saved adapter; held by the model
host, see ``host.py``) and the trainer's PEFT model's (ComputeLogprobs with a
saved adapter; held by the LoadedModel, wherever it lives). A checkpoint is read from disk when it is first used, not at
SaveAdapter. The trained adapter ("") and the base need no slot.

A Generate pins its adapter from before the adapter is loaded until its last
sample ends, so a pinned adapter is never evicted, and SaveAdapter(overwrite)
or DeleteAdapter of it is refused until the samples finish. ``pin`` and
``unpin`` run on the event loop; everything else where the slots' adapters are loaded.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from service.errors import FailedPrecondition, ResourceExhausted
from service.runtime.checkpoints import CheckpointStore
from service.runtime.specs import AdapterCheckpoint


def peft_adapter_name(role: str, checkpoint_name: str) -> str:
    """The name a saved checkpoint gets inside a PEFT model, for one ``role`` ("engine", "scorer").

    PEFT keeps adapters in module dicts (no '.' allowed) and finds an adapter's
    parameters by substring match on its name, so a checkpoint called
    "default" or "a" must not be used verbatim: hex-encode it between markers.
    """
    return f"{role}-{checkpoint_name.encode().hex()}-"


class AdapterSlots:
    """Up to ``capacity`` saved adapters loaded through ``load(name, directory)`` / ``unload(name)``."""

    def __init__(self, capacity: int, load: Callable[[str, Path], None], unload: Callable[[str], None]) -> None:
        self._capacity = capacity
        self._load = load
        self._unload = unload
        self._held: dict[str, AdapterCheckpoint] = {}
        """Changed on the device thread only; read on the event loop by ``held``."""
        self._pins: Counter[str] = Counter()
        self._last_used: dict[str, int] = {}
        self._uses = itertools.count(1)

    def pin(self, name: str) -> None:
        """Keep ``name`` loaded until ``unpin`` (event loop, before its samples are queued); counts as a use."""
        self._pins[name] += 1
        self._last_used[name] = next(self._uses)

    def unpin(self, name: str) -> None:
        """Release one ``pin``."""
        self._pins[name] -= 1
        if self._pins[name] <= 0:
            del self._pins[name]

    def held(self, name: str) -> AdapterCheckpoint | None:
        """The checkpoint loaded as ``name``, if it is; once pinned, a held adapter stays held."""
        return self._held.get(name)

    def acquire(self, name: str, store: CheckpointStore) -> AdapterCheckpoint:
        """Make ``name`` loaded (reading it from ``store`` on first use); return what is loaded.

        NOT_FOUND when there is no such checkpoint; RESOURCE_EXHAUSTED when every
        slot holds an adapter that running samples still use.
        """
        self._last_used[name] = next(self._uses)
        if name in self._held:
            return self._held[name]
        checkpoint = store.describe(name)
        if len(self._held) >= self._capacity:
            self._evict_one()
        self._load(name, store.directory(name))
        self._held[name] = checkpoint
        return checkpoint

    def forget(self, name: str) -> None:
        """Unload ``name`` before its checkpoint is replaced or deleted; FAILED_PRECONDITION while samples use it."""
        if self._pins[name] > 0:
            raise FailedPrecondition(f"adapter {name!r} is being sampled from: retry when those Generate calls have finished")
        if self._held.pop(name, None) is not None:
            self._unload(name)

    def _evict_one(self) -> None:
        unpinned = [held for held in self._held if self._pins[held] == 0]
        if not unpinned:
            raise ResourceExhausted(
                f"all {self._capacity} adapter slots (max_loras) hold saved adapters that running samples use: "
                "retry later, or LoadModel with a larger max_loras"
            )
        victim = min(unpinned, key=lambda held: self._last_used.get(held, 0))
        del self._held[victim]
        self._unload(victim)


def scorer_slots(peft_model, capacity: int) -> AdapterSlots:
    """Slots in the trainer's PEFT model, where saved adapters load frozen beside the trained one (ComputeLogprobs)."""

    def load_for_scoring(name: str, directory: Path) -> None:
        peft_model.load_adapter(str(directory), adapter_name=peft_adapter_name("scorer", name), is_trainable=False)

    def unload_from_scoring(name: str) -> None:
        peft_model.delete_adapter(peft_adapter_name("scorer", name))

    return AdapterSlots(capacity, load_for_scoring, unload_from_scoring)
