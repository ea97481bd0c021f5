"""Scale-out: a trainer publishes adapter versions to the adapter store, samplers follow them.

:class:`AdapterPublisher` (trainer role) listens for changes of the trained
adapter and, every ``publish_every_steps`` optimizer steps (and after any
other change, such as LoadAdapter), snapshots it in order on the controller
and writes it to the store off the event loop. Changes that pile up while a
publish is being written are coalesced: the next snapshot takes the newest.

:class:`AdapterFollower` (sampler role) polls the store's manifest and
installs each new version through the controller, between samples. A
published adapter that does not fit the loaded model (another base model or
LoRA shape: the controller refuses it with FAILED_PRECONDITION) is logged and
skipped until the manifest or the model changes. After each model load the
follower catches up before the server reports SERVING (see ``caught_up``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from service.errors import FailedPrecondition, ModelNotLoaded
from service.metrics import Metrics
from service.runtime.adapter_store import AdapterStore, Manifest
from service.runtime.checkpoints import CheckpointContents
from service.runtime.specs import ModelDescription

log = logging.getLogger(__name__)
POLL_SECONDS = 0.1
"""How often a sampler reads the manifest: the floor of the publish -> serve lag."""
FLUSH_SECONDS = 30.0
"""Longest a stopping trainer waits for its last publish."""


class AdapterHost(Protocol):
    """What publishing and following need of the controller."""

    @property
    def loaded(self) -> bool:
        """A model is loaded."""

    @property
    def adapter_version(self) -> int:
        """The version now trained or served."""

    async def describe(self) -> ModelDescription | None:
        """The loaded model, or None."""

    def on_adapter_change(self, listener: Callable[[int], Awaitable[None]]) -> None:
        """Await ``listener(version)`` after every change of the trained adapter."""

    async def snapshot_adapter(self) -> CheckpointContents:
        """The trained adapter's contents, taken in order after earlier work."""

    async def install_adapter(self, contents: CheckpointContents) -> None:
        """Serve these LoRA weights (and their version) from the next sample on."""


class AdapterPublisher:
    """Trainer role: writes the trained adapter to the store; see the module docstring."""

    def __init__(self, host: AdapterHost, store: AdapterStore, metrics: Metrics) -> None:
        self._host = host
        self._store = store
        self._metrics = metrics
        self._due = asyncio.Event()
        self._pending = False
        self._stopping = False
        self._last_change: tuple[int, int] | None = None
        """(adapter version, step) at the last change seen."""
        self._steps_unpublished = 0
        self._task: asyncio.Task[None] | None = None
        self.published_version = 0
        """Version of the newest publish in the store."""

    async def start(self) -> None:
        """Tidy what a killed publish left, read the newest publish, and start listening."""
        try:
            await asyncio.to_thread(self._store.recover)
            manifest = await asyncio.to_thread(self._store.manifest)
            self.published_version = 0 if manifest is None else manifest.adapter_version
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("cannot read the adapter store %s; each publish tries again", self._store.root, exc_info=True)
        self._host.on_adapter_change(self._on_adapter_change)
        self._task = asyncio.create_task(self._run(), name="adapter-publisher")

    async def stop(self) -> None:
        """Finish a publish in progress or due (within FLUSH_SECONDS), then stop."""
        if self._task is None:
            return
        self._stopping = True
        self._due.set()
        try:
            await asyncio.wait_for(self._task, FLUSH_SECONDS)
        except TimeoutError:
            log.warning("the last adapter publish did not finish within %.0f s; samplers keep version %d", FLUSH_SECONDS, self.published_version)

    async def _on_adapter_change(self, version: int) -> None:
        """Mark a publish due every ``publish_every_steps`` optimizer steps, and on any change that is not one step.

        Awaited by the controller after the change; it never raises into the call that made it.
        """
        try:
            description = await self._host.describe()
        except Exception:
            log.warning("cannot describe the model after adapter version %d changed; not publishing it", version, exc_info=True)
            return
        if description is None or description.publish_every_steps == 0:
            return
        change = (version, description.step)
        one_step = self._last_change is not None and change == (self._last_change[0] + 1, self._last_change[1] + 1)
        self._last_change = change
        self._steps_unpublished += 1
        if not one_step or self._steps_unpublished >= description.publish_every_steps:
            self._steps_unpublished = 0
            self._pending = True
            self._due.set()

    async def _run(self) -> None:
        while True:
            await self._due.wait()
            self._due.clear()
            if self._pending:
                self._pending = False
                await self._publish()
            if self._stopping and not self._pending:
                return

    async def _publish(self) -> None:
        try:
            contents = await self._host.snapshot_adapter()
            manifest = await asyncio.to_thread(self._store.publish, contents)
        except ModelNotLoaded:
            return  # unloaded since the change: nothing to publish
        except Exception:
            self._metrics.adapter_publishes.labels("failed").inc()
            log.exception("publishing the adapter failed; samplers keep version %d until the next change", self.published_version)
            return
        self.published_version = manifest.adapter_version
        self._metrics.adapter_publishes.labels("written").inc()
        log.info("published adapter version %d (entry %s)", manifest.adapter_version, manifest.entry)


class AdapterFollower:
    """Sampler role: installs each version the store's manifest names; see the module docstring."""

    def __init__(self, host: AdapterHost, store: AdapterStore, metrics: Metrics, poll_seconds: float = POLL_SECONDS) -> None:
        self._host = host
        self._store = store
        self._metrics = metrics
        self._on_caught_up: Callable[[], Awaitable[None]] | None = None
        self._poll_seconds = poll_seconds
        self._lock = asyncio.Lock()
        self._installed: Manifest | None = None
        self._skipped: int | None = None
        """Sequence of a publish that does not fit the loaded model."""
        self._last_error = ""
        self._task: asyncio.Task[None] | None = None
        self.caught_up = False
        """The loaded model serves the newest publish (or cannot: it does not fit); readiness waits for it."""
        self.published_version = 0
        """Version of the newest publish seen in the store."""

    def start(self, on_caught_up: Callable[[], Awaitable[None]]) -> None:
        """Poll the manifest from now on; await ``on_caught_up()`` whenever ``caught_up`` turns true."""
        self._on_caught_up = on_caught_up
        self._task = asyncio.create_task(self._run(), name="adapter-follower")

    async def stop(self) -> None:
        """Stop polling."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def model_changed(self) -> None:
        """After a model load or unload: catch up again before ``caught_up`` (failures are logged; polling retries)."""
        self._skipped = None  # another model may fit what did not fit the last one
        self.caught_up = False
        await self._poll()

    async def _run(self) -> None:
        while True:
            await self._poll()
            await asyncio.sleep(self._poll_seconds)

    async def _poll(self) -> None:
        """Catch up, logging a failure once until it changes (the next poll retries).

        Expected failures: the store unreachable, an entry pruned between reading
        the manifest and reading it, the model replaced while installing.
        """
        try:
            await self.catch_up()
        except Exception as error:
            message = f"{type(error).__name__}: {error}"
            if message != self._last_error:
                log.warning("could not follow the adapter store %s (retrying every %.1f s): %s", self._store.root, self._poll_seconds, message)
            self._last_error = message
            return
        self._last_error = ""

    async def catch_up(self) -> None:
        """Install the manifest's version unless it is served already or does not fit; then mark caught up."""
        async with self._lock:
            if not self._host.loaded:
                return  # nothing to install into: the next model load catches up
            manifest = await asyncio.to_thread(self._store.manifest)
            if manifest is not None:
                self.published_version = manifest.adapter_version
                if self._needs_install(manifest):
                    await self._install(manifest)
            if not self.caught_up:
                self.caught_up = True
                if self._on_caught_up is not None:
                    await self._on_caught_up()

    def _needs_install(self, manifest: Manifest) -> bool:
        if manifest.sequence == self._skipped:
            return False
        installed = self._installed
        # A model load resets the served version: a publish installed before it must be installed again.
        return installed is None or installed.sequence != manifest.sequence or self._host.adapter_version != manifest.adapter_version

    async def _install(self, manifest: Manifest) -> None:
        contents = await asyncio.to_thread(self._store.read, manifest)
        try:
            await self._host.install_adapter(contents)
        except FailedPrecondition as refusal:
            self._skipped = manifest.sequence
            log.warning("skipping published adapter version %d: %s", manifest.adapter_version, refusal)
            return
        self._installed = manifest
        if self.caught_up:  # following; a catch-up after a model load would count the time this replica was not running
            self._metrics.adapter_publish_lag_seconds.observe(max(0.0, time.time() - manifest.published_unix_seconds))
        log.info("serving published adapter version %d (entry %s)", manifest.adapter_version, manifest.entry)
