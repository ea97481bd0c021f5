"""GetModel reads the model (and the accelerator's memory) off the event loop: a read never blocks other calls."""

from __future__ import annotations

import threading
from pathlib import Path

from prometheus_client import CollectorRegistry

from service.config import ServerConfig
from service.metrics import Metrics
from service.runtime import model_ops
from service.runtime.controller import Controller
from service.runtime.specs import LoadSpec, ModelDescription


async def test_describe_runs_in_a_worker_thread(tiny_cache: Path, monkeypatch) -> None:
    controller = Controller(ServerConfig(cache_dir=tiny_cache, startup_model=None), Metrics(CollectorRegistry()))
    controller.start()
    try:
        async for _ in controller.load_model(LoadSpec()):
            pass
        threads: list[threading.Thread] = []
        real_describe = model_ops.describe

        def recording_describe(loaded) -> ModelDescription:
            threads.append(threading.current_thread())
            return real_describe(loaded)

        monkeypatch.setattr(model_ops, "describe", recording_describe)
        description = await controller.describe()
        assert description is not None and description.model_name == "tandem/tiny"
        assert threads and threads[0] is not threading.main_thread(), "GetModel read the model on the event loop's thread"
        assert threads[0].name != "tandem-device", "a read must not wait behind the device loop's work"
    finally:
        await controller.stop()
