"""The adapter store: each publish becomes the newest entry atomically, old ones are pruned, leftovers never show."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from service.runtime.adapter_store import MANIFEST_FILE, AdapterStore
from service.runtime.checkpoints import CheckpointContents, CheckpointMetadata
from service.runtime.specs import LoraSpec

KEY = "base_model.model.layer.lora_B.weight"


def snapshot(version: int, step: int | None = None) -> CheckpointContents:
    """What Controller.snapshot_adapter returns, with weights that say their version."""
    return CheckpointContents(
        metadata=CheckpointMetadata(
            name="snapshot", step=version if step is None else step, adapter_version=version, model_name="tandem/tiny", lora=LoraSpec(rank=4), created_unix_seconds=1.0
        ),
        lora_weights={KEY: torch.full((4, 2), float(version))},
        peft_config={"peft_type": "LORA", "r": 4},
        training_state={"parameter_names": ["layer.lora_B.default.weight"], "optimizer": {"state": {0: {"exp_avg": torch.ones(8)}}}},
    )


def test_nothing_published_reads_as_no_manifest(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "store")
    assert store.manifest() is None and store.entries() == []


def test_a_publish_is_named_by_the_manifest_and_reads_back(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path)
    manifest = store.publish(snapshot(7))
    assert store.manifest() == manifest
    assert (manifest.sequence, manifest.entry, manifest.adapter_version, manifest.model_name) == (1, "0000000001-v7", 7, "tandem/tiny")
    back = store.read(manifest)
    assert back.metadata.name == manifest.entry and back.metadata.adapter_version == 7
    assert torch.equal(back.lora_weights[KEY], torch.full((4, 2), 7.0))
    # Samplers do not train: the optimizer state stays with the trainer, the parameter names travel.
    assert back.training_state == {"parameter_names": ["layer.lora_B.default.weight"]}


def test_old_entries_are_pruned_to_the_newest_few(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path, keep=3)
    for version in range(1, 6):
        store.publish(snapshot(version))
    assert store.entries() == ["0000000003-v3", "0000000004-v4", "0000000005-v5"]
    assert store.manifest().entry == "0000000005-v5"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([MANIFEST_FILE, *store.entries()])


def test_a_restarted_trainer_publishing_lower_versions_still_writes_the_newest_entry(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path)
    for version in (1, 2, 3):
        store.publish(snapshot(version))
    restarted = AdapterStore(tmp_path)
    manifest = restarted.publish(snapshot(1))
    assert (manifest.sequence, manifest.entry) == (4, "0000000004-v1")
    assert torch.equal(restarted.read(manifest).lora_weights[KEY], torch.full((4, 2), 1.0))
    assert "0000000001-v1" not in restarted.entries()


def test_leftovers_of_a_killed_publish_are_never_read_and_recover_clears_them(tmp_path: Path) -> None:
    """A publish killed before the manifest rename leaves staging files or an unnamed entry: readers keep the previous one."""
    store = AdapterStore(tmp_path)
    previous = store.publish(snapshot(1))
    (tmp_path / ".tmp-0000000002-v2-abcd1234").mkdir()
    (tmp_path / ".tmp-0000000002-v2-abcd1234" / "adapter_model.safetensors").write_bytes(b"half")
    (tmp_path / ".manifest-abcd1234.json").write_text('{"sequence": 2, "entry": "0000000002-v2"')
    unnamed = AdapterStore(tmp_path / "elsewhere").publish(snapshot(2))  # a whole entry whose manifest never landed
    (tmp_path / "elsewhere" / unnamed.entry).rename(tmp_path / "0000000002-v2")
    assert store.manifest() == previous
    assert torch.equal(store.read(store.manifest()).lora_weights[KEY], torch.full((4, 2), 1.0))
    store.recover()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # The next publish takes the unnamed entry's sequence over and prunes nothing it still needs.
    manifest = store.publish(snapshot(3))
    assert manifest.entry == "0000000002-v3"
    assert store.entries() == ["0000000001-v1", "0000000002-v3"]


def test_the_manifest_is_replaced_not_rewritten_in_place(tmp_path: Path) -> None:
    """A reader that opened the old manifest still reads it whole after a publish (rename, not truncate)."""
    store = AdapterStore(tmp_path)
    store.publish(snapshot(1))
    with (tmp_path / MANIFEST_FILE).open() as old:
        store.publish(snapshot(2))
        assert json.loads(old.read())["adapter_version"] == 1
    assert store.manifest().adapter_version == 2


def test_keep_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        AdapterStore(tmp_path, keep=0)
