"""The checkpoint store's files: round trip, atomic overwrite, crash recovery, listing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from service.errors import AlreadyExists, InvalidArgument, NotFound
from service.runtime.checkpoints import METADATA_FILE, CheckpointContents, CheckpointMetadata, CheckpointStore
from service.runtime.specs import LoraSpec


def contents(name: str, step: int = 3) -> CheckpointContents:
    return CheckpointContents(
        metadata=CheckpointMetadata(name=name, step=step, adapter_version=step + 1, model_name="tandem/tiny", lora=LoraSpec(rank=4), created_unix_seconds=1.5),
        lora_weights={"base_model.model.layer.lora_A.weight": torch.arange(8.0).reshape(4, 2)},
        peft_config={"peft_type": "LORA", "r": 4},
        training_state={"optimizer": {"state": {0: {"exp_avg": torch.ones(2)}}, "param_groups": []}, "step": step},
    )


def test_a_written_checkpoint_reads_back_exactly(tmp_path: Path):
    store = CheckpointStore(tmp_path / "root")
    summary = store.write(contents("run.1"), overwrite=False)
    assert (summary.name, summary.step, summary.adapter_version, summary.rank, summary.model_name) == ("run.1", 3, 4, 4, "tandem/tiny")
    assert summary.size_bytes == sum(f.stat().st_size for f in (tmp_path / "root" / "run.1").iterdir())
    back = store.read("run.1")
    assert back.metadata == contents("run.1").metadata
    assert torch.equal(back.lora_weights["base_model.model.layer.lora_A.weight"], torch.arange(8.0).reshape(4, 2))
    assert back.peft_config == {"peft_type": "LORA", "r": 4}
    assert torch.equal(back.training_state["optimizer"]["state"][0]["exp_avg"], torch.ones(2))


def test_overwrite_needs_asking_and_leaves_only_the_new_one(tmp_path: Path):
    store = CheckpointStore(tmp_path)
    store.write(contents("a", step=1), overwrite=False)
    with pytest.raises(AlreadyExists):
        store.write(contents("a", step=2), overwrite=False)
    assert store.describe("a").step == 1
    store.write(contents("a", step=2), overwrite=True)
    assert store.describe("a").step == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_names_are_checked_and_confined(tmp_path: Path):
    store = CheckpointStore(tmp_path)
    for bad in ("", "base", "../up", "a/b", ".tmp-a-1"):
        with pytest.raises(InvalidArgument):
            store.directory(bad)
    with pytest.raises(NotFound):
        store.read("absent")
    with pytest.raises(NotFound):
        store.delete("absent")


def test_recover_restores_a_checkpoint_an_interrupted_overwrite_moved_aside(tmp_path: Path):
    store = CheckpointStore(tmp_path)
    store.write(contents("kept"), overwrite=False)
    (tmp_path / "kept").rename(tmp_path / ".old-kept-0a1b2c3d")  # crash between the two renames of an overwrite
    (tmp_path / ".tmp-kept-deadbeef").mkdir()  # and the new one never finished
    assert store.list() == []
    store.recover()
    assert [c.name for c in store.list()] == ["kept"] and store.read("kept").metadata.step == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]


def test_recover_drops_an_old_copy_once_the_new_one_landed(tmp_path: Path):
    store = CheckpointStore(tmp_path)
    store.write(contents("b-1", step=5), overwrite=False)
    (tmp_path / ".old-b-1-00ff00ff").mkdir()
    (tmp_path / ".old-b-1-00ff00ff" / METADATA_FILE).write_text(contents("b-1", step=4).metadata.to_json())
    store.recover()
    assert store.describe("b-1").step == 5 and sorted(p.name for p in tmp_path.iterdir()) == ["b-1"]


def test_listing_skips_partial_and_foreign_directories(tmp_path: Path):
    store = CheckpointStore(tmp_path)
    store.write(contents("z"), overwrite=False)
    store.write(contents("m"), overwrite=False)
    (tmp_path / "no-metadata").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / METADATA_FILE).write_text(json.dumps({"name": "broken"}))
    (tmp_path / ".tmp-x-1").mkdir()
    assert [c.name for c in store.list()] == ["m", "z"]
    store.delete("m")
    assert [c.name for c in store.list()] == ["z"]
    assert CheckpointStore(tmp_path / "missing").list() == []
