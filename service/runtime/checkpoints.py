"""Named adapter checkpoints on disk, written atomically.

Layout under the checkpoint root::

    <name>/adapter_model.safetensors  LoRA weights in PEFT's format (PEFT and vLLM load the directory)
    <name>/adapter_config.json        PEFT's LoraConfig for them
    <name>/training_state.pt          optimizer state, accumulated gradient, RNG state, parameter names
    <name>/tandem.json                step, adapter version, model name, LoRA settings, save time
    .tmp-<name>-<token>/              a checkpoint being written (never listed)
    .old-<name>-<token>/              the previous checkpoint while an overwrite swaps it out

A checkpoint is written into a ``.tmp-`` directory in the same root, every
file and the directory fsynced, then renamed to its name, so a crash never
leaves a half-written checkpoint visible. An overwrite renames the old
directory to ``.old-`` first, renames the new one in, then deletes the old
one; :meth:`CheckpointStore.recover` (at start-up) puts an ``.old-`` directory
back when a crash fell between the two renames, and removes leftovers.
Checkpoint names never start with '.', so these never collide with one.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from service.errors import AlreadyExists, NotFound, ResourceExhausted
from service.runtime.paths import confined_path
from service.runtime.specs import AdapterCheckpoint, LoraSpec
from service.runtime.validation import check_checkpoint_name

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_CONFIG_FILE = "adapter_config.json"
TRAINING_STATE_FILE = "training_state.pt"
METADATA_FILE = "tandem.json"
_TMP_PREFIX = ".tmp-"
_OLD_PREFIX = ".old-"


@dataclass(frozen=True)
class CheckpointMetadata:
    """What ``tandem.json`` records about a checkpoint."""

    name: str
    step: int
    adapter_version: int
    model_name: str
    lora: LoraSpec
    created_unix_seconds: float
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        """The file's text."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CheckpointMetadata:
        """Parse the file's text (raises ValueError/KeyError/TypeError when malformed)."""
        raw = json.loads(text)
        lora = raw.pop("lora")
        lora["target_modules"] = tuple(lora["target_modules"])
        return cls(lora=LoraSpec(**lora), **raw)


@dataclass
class CheckpointContents:
    """Everything a checkpoint holds, in memory."""

    metadata: CheckpointMetadata
    lora_weights: dict[str, torch.Tensor]
    """PEFT state-dict keys (adapter name stripped) -> CPU tensors."""
    peft_config: dict[str, Any]
    training_state: dict[str, Any]
    """Plain tensors, numbers, strings, lists and dicts only (loaded with ``weights_only=True``)."""


class CheckpointStore:
    """The checkpoints under one root directory. Writes and deletes must be serialized by the caller (the device loop)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def directory(self, name: str) -> Path:
        """The checkpoint's directory (it may not exist); INVALID_ARGUMENT for a bad name."""
        check_checkpoint_name("name", name)
        return confined_path(self.root, name, "name")

    def write(self, contents: CheckpointContents, overwrite: bool) -> AdapterCheckpoint:
        """Write a checkpoint atomically; ALREADY_EXISTS unless ``overwrite``, RESOURCE_EXHAUSTED when the disk is full."""
        name = contents.metadata.name
        final = self.directory(name)
        if final.exists() and not overwrite:
            raise AlreadyExists(f"adapter checkpoint {name!r} exists: pick another name or set overwrite=true")
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f"{_TMP_PREFIX}{name}-{secrets.token_hex(4)}"
        try:
            staging.mkdir()
            _write_files(staging, contents)
            _swap_in(staging, final)
        except OSError as error:
            shutil.rmtree(staging, ignore_errors=True)
            if error.errno == errno.ENOSPC:
                raise ResourceExhausted(f"no space left under the checkpoint root to save {name!r}: delete old checkpoints") from None
            raise
        return self.describe(name)

    def read(self, name: str) -> CheckpointContents:
        """Load a checkpoint's files into memory (CPU tensors); NOT_FOUND when absent."""
        directory = self._existing(name)
        return CheckpointContents(
            metadata=self._metadata(directory),
            lora_weights=load_file(directory / WEIGHTS_FILE, device="cpu"),
            peft_config=json.loads((directory / PEFT_CONFIG_FILE).read_text()),
            training_state=torch.load(directory / TRAINING_STATE_FILE, map_location="cpu", weights_only=True),
        )

    def describe(self, name: str) -> AdapterCheckpoint:
        """The checkpoint's summary; NOT_FOUND when absent."""
        directory = self._existing(name)
        return _summary(self._metadata(directory), directory)

    def list(self) -> list[AdapterCheckpoint]:
        """Every readable checkpoint, by name; entries being written, swapped or malformed are skipped."""
        found = []
        for directory in self._candidates():
            try:
                found.append(_summary(self._metadata(directory), directory))
            except (OSError, ValueError, KeyError, TypeError):  # vanished mid-listing, or not a checkpoint of ours
                log.warning("skipping unreadable checkpoint directory %s", directory.name)
        return sorted(found, key=lambda c: c.name)

    def delete(self, name: str) -> None:
        """Remove a checkpoint: renamed out of sight first, so a crash mid-delete leaves no partial checkpoint."""
        directory = self._existing(name)
        doomed = self.root / f"{_OLD_PREFIX}{name}-{secrets.token_hex(4)}"
        os.rename(directory, doomed)
        fsync_path(self.root)
        shutil.rmtree(doomed)

    def recover(self) -> None:
        """Finish or undo what a crash interrupted: drop partial writes, restore a swapped-out checkpoint whose replacement never landed."""
        if not self.root.is_dir():
            return
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith(_TMP_PREFIX):
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.name.startswith(_OLD_PREFIX):
                name = entry.name[len(_OLD_PREFIX):].rsplit("-", 1)[0]
                target = self.root / name
                if (entry / METADATA_FILE).is_file() and not target.exists():
                    os.rename(entry, target)
                    log.warning("restored checkpoint %r that an interrupted overwrite had moved aside", name)
                else:
                    shutil.rmtree(entry, ignore_errors=True)
        fsync_path(self.root)

    def _existing(self, name: str) -> Path:
        directory = self.directory(name)
        if not (directory / METADATA_FILE).is_file():
            raise NotFound(f"adapter checkpoint {name!r} does not exist: ListAdapters shows the saved ones")
        return directory

    @staticmethod
    def _metadata(directory: Path) -> CheckpointMetadata:
        return CheckpointMetadata.from_json((directory / METADATA_FILE).read_text())

    def _candidates(self) -> Iterator[Path]:
        if not self.root.is_dir():
            return
        for entry in self.root.iterdir():
            # a symlink is never a checkpoint: LoadAdapter refuses links out of the root, so listing must not show them
            if not entry.name.startswith(".") and not entry.is_symlink() and entry.is_dir() and (entry / METADATA_FILE).is_file():
                yield entry


def _write_files(directory: Path, contents: CheckpointContents) -> None:
    """Write and fsync every file, metadata last, then the directory."""
    weights = {key: tensor.detach().to("cpu").contiguous() for key, tensor in contents.lora_weights.items()}
    save_file(weights, directory / WEIGHTS_FILE, metadata={"format": "pt"})
    (directory / PEFT_CONFIG_FILE).write_text(json.dumps(contents.peft_config, indent=2, sort_keys=True))
    torch.save(contents.training_state, directory / TRAINING_STATE_FILE)
    (directory / METADATA_FILE).write_text(contents.metadata.to_json())
    for path in directory.iterdir():
        fsync_path(path)
    fsync_path(directory)


def _swap_in(staging: Path, final: Path) -> None:
    """Rename ``staging`` to ``final``; an existing ``final`` is moved aside first and deleted after."""
    old = None
    if final.exists():
        old = final.parent / f"{_OLD_PREFIX}{final.name}-{secrets.token_hex(4)}"
        os.rename(final, old)
    os.rename(staging, final)
    fsync_path(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _summary(metadata: CheckpointMetadata, directory: Path) -> AdapterCheckpoint:
    return AdapterCheckpoint(
        name=directory.name,
        step=metadata.step,
        adapter_version=metadata.adapter_version,
        rank=metadata.lora.rank,
        size_bytes=sum(f.stat().st_size for f in directory.iterdir() if f.is_file()),
        created_unix_seconds=metadata.created_unix_seconds,
        model_name=metadata.model_name,
    )


def fsync_path(path: Path) -> None:
    """Flush a file's or directory's contents to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
