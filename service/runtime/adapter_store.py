"""The adapter store: published adapter versions in one directory, the newest named by a manifest.

One trainer writes, any number of samplers read (the directory is a
ReadWriteMany volume in Kubernetes). Layout under the store root::

    manifest.json               the newest publish: sequence, entry, adapter version, model, publish time
    <sequence>-v<version>/      one published version, in the checkpoint format of checkpoints.py
    .tmp-<entry>-<token>/       an entry being written (checkpoints.py)
    .old-<entry>-<token>/       an entry being pruned (checkpoints.py)
    .manifest-<token>.json      a manifest being written

A publish writes its entry through :class:`CheckpointStore` (staging
directory, fsync, rename), then the manifest (temporary file, fsync, rename
over the old one), then prunes all but the newest few entries. Readers only
ever open the entry the manifest names, so a publish killed at any point is
invisible: until the manifest's rename, readers see the previous version.

Entries are numbered by a publish sequence carried from manifest to manifest,
so a trainer restarted from scratch (whose adapter versions start again at 1)
still writes the newest entry, never over one a sampler may be reading.

Entries hold the LoRA weights, PEFT config and metadata; their
``training_state.pt`` keeps only the parameter names (which check that
weights fit a model), not the optimizer state: samplers do not train, and a
publish costs the size of the weights alone.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from service.runtime.checkpoints import CheckpointContents, CheckpointStore, fsync_path

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
DEFAULT_KEEP = 3
"""Entries kept: the newest and two before it, so a sampler that read the manifest just before a publish still finds its entry."""
_MANIFEST_STAGING_PREFIX = ".manifest-"
_ENTRY_NAME = re.compile(r"(\d{10})-v\d+")


@dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` says about the newest publish."""

    sequence: int
    """Publishes so far, across trainer restarts; the entry's number."""
    entry: str
    adapter_version: int
    model_name: str
    published_unix_seconds: float
    """Wall-clock time of the publish (the start of the publish -> serve lag)."""
    format_version: int = MANIFEST_FORMAT

    def to_json(self) -> str:
        """The file's text."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Parse the file's text (raises ValueError/KeyError/TypeError when malformed)."""
        return cls(**json.loads(text))


class AdapterStore:
    """Published adapter versions under ``root``. One process publishes; reading is safe from any number of others."""

    def __init__(self, root: Path, keep: int = DEFAULT_KEEP) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.root = root
        self._keep = keep
        self._entries = CheckpointStore(root)

    def manifest(self) -> Manifest | None:
        """The newest publish, or None when nothing was published yet."""
        try:
            return Manifest.from_json((self.root / MANIFEST_FILE).read_text())
        except FileNotFoundError:
            return None

    def read(self, manifest: Manifest) -> CheckpointContents:
        """The published adapter a manifest names (NOT_FOUND or FileNotFoundError when it was pruned since)."""
        return self._entries.read(manifest.entry)

    def publish(self, contents: CheckpointContents) -> Manifest:
        """Write ``contents`` as the newest version: entry, then manifest, then prune. Atomic at every step."""
        previous = self.manifest()
        sequence = 1 if previous is None else previous.sequence + 1
        version = contents.metadata.adapter_version
        entry = f"{sequence:010d}-v{version}"
        published = CheckpointContents(
            metadata=replace(contents.metadata, name=entry),
            lora_weights=contents.lora_weights,
            peft_config=contents.peft_config,
            training_state={"parameter_names": contents.training_state["parameter_names"]},
        )
        self._entries.write(published, overwrite=True)  # overwrite: an entry a killed publish left unnamed by any manifest
        manifest = Manifest(sequence, entry, version, contents.metadata.model_name, time.time())
        self._write_manifest(manifest)
        self._prune(manifest)
        return manifest

    def recover(self) -> None:
        """Drop what a killed publish left half-written (the publisher calls this before its first publish)."""
        self._entries.recover()
        if self.root.is_dir():
            for staged in self.root.glob(f"{_MANIFEST_STAGING_PREFIX}*"):
                staged.unlink(missing_ok=True)

    def entries(self) -> list[str]:
        """Names of the published entries on disk, oldest first (the manifest names one of them)."""
        if not self.root.is_dir():
            return []
        found = [e.name for e in self.root.iterdir() if _ENTRY_NAME.fullmatch(e.name) and e.is_dir() and not e.is_symlink()]
        return sorted(found)

    def _write_manifest(self, manifest: Manifest) -> None:
        staging = self.root / f"{_MANIFEST_STAGING_PREFIX}{secrets.token_hex(4)}.json"
        try:
            staging.write_text(manifest.to_json())
            fsync_path(staging)
            os.replace(staging, self.root / MANIFEST_FILE)
        except OSError:
            staging.unlink(missing_ok=True)
            raise
        fsync_path(self.root)

    def _prune(self, manifest: Manifest) -> None:
        """Keep the manifest's entry and the ``keep - 1`` published before it; delete the rest (and unnamed leftovers)."""
        entries = self.entries()
        older = [name for name in entries if _sequence(name) < manifest.sequence]
        kept = {manifest.entry, *(older[-(self._keep - 1):] if self._keep > 1 else ())}
        for name in entries:
            if name not in kept:
                try:
                    self._entries.delete(name)
                except OSError:
                    log.warning("could not prune published adapter %s; the next publish retries", name, exc_info=True)


def _sequence(entry: str) -> int:
    """The publish sequence number an entry's name starts with."""
    return int(entry.split("-", 1)[0])
