"""Saved-adapter slots: loaded on first use, bounded, least recently used evicted, pinned ones kept."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from service.errors import FailedPrecondition, NotFound, ResourceExhausted
from service.runtime.adapter_slots import AdapterSlots, peft_adapter_name
from service.runtime.checkpoints import CheckpointContents, CheckpointMetadata, CheckpointStore
from service.runtime.specs import LoraSpec


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    store = CheckpointStore(tmp_path)
    for step, name in enumerate(("a", "b", "c")):
        metadata = CheckpointMetadata(name=name, step=step, adapter_version=step, model_name="m", lora=LoraSpec(), created_unix_seconds=0.0)
        store.write(CheckpointContents(metadata, {"w": torch.zeros(1)}, {}, {}), overwrite=False)
    return store


class Recorder:
    """Stands in for an engine: records what is loaded."""

    def __init__(self) -> None:
        self.loaded: dict[str, Path] = {}
        self.loads = 0

    def load(self, name: str, directory: Path) -> None:
        self.loads += 1
        self.loaded[name] = directory

    def unload(self, name: str) -> None:
        del self.loaded[name]


def test_loads_on_first_use_only_and_evicts_the_least_recently_used(store):
    engine = Recorder()
    slots = AdapterSlots(2, engine.load, engine.unload)
    assert slots.acquire("a", store).step == 0 and engine.loaded == {"a": store.directory("a")}
    slots.acquire("b", store)
    slots.acquire("a", store)  # a is now the most recent
    assert engine.loads == 2
    slots.acquire("c", store)
    assert sorted(engine.loaded) == ["a", "c"] and slots.held("b") is None


def test_pinned_adapters_are_not_evicted_changed_or_deleted(store):
    engine = Recorder()
    slots = AdapterSlots(1, engine.load, engine.unload)
    slots.pin("a")
    slots.acquire("a", store)
    with pytest.raises(ResourceExhausted):
        slots.acquire("b", store)
    with pytest.raises(FailedPrecondition):
        slots.forget("a")
    slots.unpin("a")
    slots.acquire("b", store)
    assert list(engine.loaded) == ["b"]
    slots.forget("b")
    assert engine.loaded == {}


def test_missing_checkpoints_are_not_found_and_load_nothing(store):
    engine = Recorder()
    with pytest.raises(NotFound):
        AdapterSlots(1, engine.load, engine.unload).acquire("nope", store)
    assert engine.loads == 0


def test_peft_names_cannot_collide_with_the_trained_adapter_or_each_other():
    names = ["default", "a", "ab", "a.b", "a-b", "A"]
    peft = [peft_adapter_name("engine", n) for n in names]
    assert len(set(peft)) == len(names) and all("." not in p and "default" not in p for p in peft)
    assert not any(p in q for p in peft for q in peft if p != q)  # PEFT matches adapter names as substrings
