"""A stand-in trainer for crash tests: publishes the newest published adapter again and again, under new versions, until killed.

``python -m tests.support.publish_loop STORE_DIR`` prints ``ready <version>``
once the adapter is read, then ``published <version>`` after each publish returns. It
runs the store's own publish code against the store directory, so a SIGKILL
at a random moment lands inside a publish (writing the entry, renaming the
manifest or pruning) almost every time.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from service.runtime.adapter_store import AdapterStore


def main(root: Path) -> None:
    """Publish until killed."""
    store = AdapterStore(root)
    manifest = store.manifest()
    contents = store.read(manifest)
    version = manifest.adapter_version
    print(f"ready {version}", flush=True)
    while True:
        version += 1
        store.publish(replace(contents, metadata=replace(contents.metadata, adapter_version=version)))
        print(f"published {version}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
