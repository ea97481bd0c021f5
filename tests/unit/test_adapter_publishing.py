"""Publishing (trainer) and following (sampler) over a real adapter store, against a fake controller.

The fake has the controller's adapter hooks (``adapter_version``,
``on_adapter_change``, ``snapshot_adapter``, ``install_adapter``) and nothing
else; tests/integration/test_scale_out.py runs the same code in real servers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from prometheus_client import CollectorRegistry

from service.errors import FailedPrecondition
from service.metrics import Metrics
from service.runtime.adapter_publishing import AdapterFollower, AdapterPublisher
from service.runtime.adapter_store import AdapterStore
from service.runtime.checkpoints import CheckpointContents
from tests.unit.test_adapter_store import KEY, snapshot


class FakeHost:
    """A controller's adapter hooks: a trained (or served) adapter whose weights equal its version."""

    def __init__(self, model_name: str = "tandem/tiny", publish_every_steps: int = 1) -> None:
        self.model_name = model_name
        self.publish_every_steps = publish_every_steps
        self.loaded = True
        self.adapter_version = 0
        self.step = 0
        self.installed: list[int] = []
        self._listeners: list[Callable[[int], Awaitable[None]]] = []

    async def describe(self) -> SimpleNamespace | None:
        return SimpleNamespace(step=self.step, publish_every_steps=self.publish_every_steps) if self.loaded else None

    def on_adapter_change(self, listener: Callable[[int], Awaitable[None]]) -> None:
        self._listeners.append(listener)

    async def change(self, version: int, step: int) -> None:
        """An applied TrainStep (version and step up by one) or a LoadAdapter (anything else)."""
        self.adapter_version, self.step = version, step
        for listener in self._listeners:
            await listener(version)

    async def snapshot_adapter(self) -> CheckpointContents:
        return snapshot(self.adapter_version, self.step)

    async def install_adapter(self, contents: CheckpointContents) -> None:
        if contents.metadata.model_name != self.model_name:
            raise FailedPrecondition(f"trained on {contents.metadata.model_name!r} but {self.model_name!r} is loaded")
        self.installed.append(contents.metadata.adapter_version)
        self.adapter_version = int(contents.lora_weights[KEY][0, 0])


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``condition()`` holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def published_versions(store: AdapterStore) -> list[int]:
    return [int(name.rsplit("-v", 1)[1]) for name in store.entries()]


async def test_a_trainer_publishes_every_k_steps_and_after_any_other_change(tmp_path: Path, metrics: Metrics) -> None:
    host, store = FakeHost(publish_every_steps=2), AdapterStore(tmp_path, keep=10)
    publisher = AdapterPublisher(host, store, metrics)
    await publisher.start()
    for step in range(1, 5):
        await host.change(step, step)
        await asyncio.sleep(0.05)  # let each publish land before the next change (changes that pile up are coalesced)
    await host.change(9, 2)  # a LoadAdapter: published at once
    await publisher.stop()
    # The first change publishes (nothing to count from), then every second step, then the LoadAdapter.
    assert published_versions(store) == [1, 3, 9]
    assert publisher.published_version == 9 == store.manifest().adapter_version
    assert metrics.registry.get_sample_value("tandem_adapter_publishes_total", {"outcome": "written"}) == 3


async def test_publish_every_zero_steps_never_publishes(tmp_path: Path, metrics: Metrics) -> None:
    host, store = FakeHost(publish_every_steps=0), AdapterStore(tmp_path)
    publisher = AdapterPublisher(host, store, metrics)
    await publisher.start()
    await host.change(1, 1)
    await publisher.stop()
    assert store.manifest() is None


async def test_a_stopping_trainer_writes_its_last_change(tmp_path: Path, metrics: Metrics) -> None:
    host, store = FakeHost(), AdapterStore(tmp_path)
    publisher = AdapterPublisher(host, store, metrics)
    await publisher.start()
    for step in range(1, 6):
        await host.change(step, step)  # no pause: publishes coalesce
    await publisher.stop()
    assert store.manifest().adapter_version == 5


async def test_a_failed_publish_is_counted_and_the_next_change_publishes_again(tmp_path: Path, metrics: Metrics) -> None:
    blocker = tmp_path / "store"
    blocker.write_text("a file where the store directory should be")
    host, store = FakeHost(), AdapterStore(blocker)
    publisher = AdapterPublisher(host, store, metrics)
    await publisher.start()
    await host.change(1, 1)
    await eventually(lambda: metrics.registry.get_sample_value("tandem_adapter_publishes_total", {"outcome": "failed"}) == 1)
    blocker.unlink()
    await host.change(2, 2)
    await publisher.stop()
    assert store.manifest().adapter_version == 2


async def test_a_sampler_catches_up_then_follows_each_publish(tmp_path: Path, metrics: Metrics) -> None:
    store = AdapterStore(tmp_path)
    store.publish(snapshot(3))
    sampler = FakeHost()
    follower = AdapterFollower(sampler, store, metrics, poll_seconds=0.01)
    caught_up: list[int] = []

    async def on_caught_up() -> None:
        caught_up.append(sampler.adapter_version)

    follower.start(on_caught_up)
    await eventually(lambda: follower.caught_up)
    assert caught_up == [3]  # readiness turns on only once the newest publish is served
    for version in (4, 5):
        store.publish(snapshot(version))
        await eventually(lambda: sampler.adapter_version == version)
    await follower.stop()
    assert sampler.installed == [3, 4, 5] and follower.published_version == 5
    assert metrics.registry.get_sample_value("tandem_adapter_publish_lag_seconds_count") == 2  # the catch-up is not a publish's lag


async def test_a_sampler_reloaded_installs_the_published_version_again(tmp_path: Path, metrics: Metrics) -> None:
    store = AdapterStore(tmp_path)
    store.publish(snapshot(2))
    sampler = FakeHost()
    follower = AdapterFollower(sampler, store, metrics, poll_seconds=3600)  # no polling: only model changes catch up
    follower.start(lambda: asyncio.sleep(0))
    await eventually(lambda: sampler.installed == [2])
    sampler.adapter_version = 0  # LoadModel: a fresh adapter
    await follower.model_changed()
    assert sampler.installed == [2, 2] and sampler.adapter_version == 2 and follower.caught_up
    await follower.stop()


async def test_a_publish_for_another_model_is_skipped_once_and_retried_after_a_model_change(
    tmp_path: Path, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    store = AdapterStore(tmp_path)
    store.publish(snapshot(4))
    sampler = FakeHost(model_name="other/model")
    follower = AdapterFollower(sampler, store, metrics, poll_seconds=0.01)
    follower.start(lambda: asyncio.sleep(0))
    with caplog.at_level(logging.WARNING):
        await eventually(lambda: follower.caught_up)
        await asyncio.sleep(0.1)  # many polls
    assert sampler.adapter_version == 0 and follower.published_version == 4
    assert sum("skipping published adapter version 4" in r.getMessage() for r in caplog.records) == 1
    sampler.model_name = "tandem/tiny"  # LoadModel of the trainer's model
    await follower.model_changed()
    assert sampler.adapter_version == 4
    await follower.stop()


async def test_a_sampler_without_a_model_waits_and_an_unreadable_store_keeps_it_not_caught_up(tmp_path: Path, metrics: Metrics) -> None:
    store = AdapterStore(tmp_path)
    store.publish(snapshot(1))
    (tmp_path / "manifest.json").write_text("not json")
    sampler = FakeHost()
    sampler.loaded = False
    follower = AdapterFollower(sampler, store, metrics, poll_seconds=0.01)
    follower.start(lambda: asyncio.sleep(0))
    await asyncio.sleep(0.05)
    sampler.loaded = True
    await follower.model_changed()
    assert not follower.caught_up  # readiness waits while the store cannot be read
    (tmp_path / "manifest.json").unlink()
    await eventually(lambda: follower.caught_up)  # nothing published: caught up with its own adapter
    assert sampler.installed == []
    await follower.stop()


async def test_publisher_and_follower_through_one_store(tmp_path: Path, metrics: Metrics) -> None:
    trainer, sampler = FakeHost(), FakeHost()
    store = AdapterStore(tmp_path)
    publisher = AdapterPublisher(trainer, store, metrics)
    follower = AdapterFollower(sampler, AdapterStore(tmp_path), Metrics(CollectorRegistry()), poll_seconds=0.01)
    await publisher.start()
    follower.start(lambda: asyncio.sleep(0))
    for step in range(1, 4):
        await trainer.change(step, step)
        await eventually(lambda: sampler.adapter_version == step)
    await publisher.stop()
    await follower.stop()
    assert torch.equal(store.read(store.manifest()).lora_weights[KEY], torch.full((4, 2), 3.0))
