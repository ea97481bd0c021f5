"""After LoadModel the server's heap is frozen out of garbage collections, and a replaced model is still collected."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

from prometheus_client import CollectorRegistry

from service.config import ServerConfig
from service.metrics import Metrics
from service.runtime.controller import Controller
from service.runtime.specs import LoadSpec


async def load(controller: Controller) -> None:
    async for _ in controller.load_model(LoadSpec()):
        pass


async def test_a_load_freezes_the_heap_and_a_replaced_model_is_still_collected(tiny_cache: Path) -> None:
    controller = Controller(ServerConfig(cache_dir=tiny_cache, startup_model=None), Metrics(CollectorRegistry()))
    controller.start()
    try:
        await load(controller)
        assert gc.get_freeze_count() > 0, "LoadModel left the heap to every full collection"
        model = controller.host.loaded.model
        model.__dict__["_test_cycle"] = [model]  # a reference cycle, as hooks and closures make in real models
        first_model = weakref.ref(model)
        del model
        await load(controller)
        gc.collect()
        assert first_model() is None, "the replaced model stayed in memory: the frozen heap was not thawed before it was released"
        assert gc.get_freeze_count() > 0
    finally:
        await controller.stop()
        gc.unfreeze()


async def test_releasing_the_model_thaws_the_heap(tiny_cache: Path) -> None:
    controller = Controller(ServerConfig(cache_dir=tiny_cache, startup_model=None), Metrics(CollectorRegistry()))
    controller.start()
    try:
        await load(controller)
        assert await controller.unload_model()
        assert gc.get_freeze_count() == 0
    finally:
        await controller.stop()
        gc.unfreeze()
