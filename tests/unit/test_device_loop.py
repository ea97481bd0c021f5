"""The device loop's ordering guarantees, with the real transformers engine on the tiny model."""

from __future__ import annotations

import asyncio
import threading

from service.runtime.device_loop import DeviceLoop, Inbox
from service.runtime.engines.base import EngineRequest
from service.runtime.specs import SampleChunk, SamplingSpec


def requests(prefix: str, count: int, max_tokens: int = 6) -> list[EngineRequest]:
    params = SamplingSpec(max_tokens=max_tokens, ignore_eos=True, temperature=0.0)
    return [EngineRequest(f"{prefix}-{i}", i, 0, (1, 40 + i, 41), params, adapter="") for i in range(count)]


async def started_loop(engine) -> DeviceLoop:
    loop = DeviceLoop()
    loop.start()
    await loop.call(lambda: loop.set_engine(engine))
    return loop


async def test_a_call_waits_for_running_samples_and_later_samples_wait_for_the_call(engine):
    loop = await started_loop(engine)
    events: list[str] = []
    inbox = Inbox(asyncio.get_running_loop(), asyncio.Queue())
    loop.admit(requests("before", 2), inbox, engine)
    barrier = loop.call(lambda: events.append(f"call sees {engine.running_requests()} running"))
    after = Inbox(asyncio.get_running_loop(), asyncio.Queue())
    loop.admit(requests("after", 1), after, engine)
    await barrier
    assert events == ["call sees 0 running"]
    finished_before = [c for c in _drain(inbox.queue) if c.finish_reason is not None]
    assert len(finished_before) == 2  # both samples ended before the call ran
    await loop.call(lambda: None)
    while engine.has_unfinished_requests():
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert any(c.finish_reason is not None for c in _drain(after.queue))
    loop.stop()


async def test_samples_aborted_while_still_queued_never_start(engine):
    loop = await started_loop(engine)
    gate = threading.Event()
    blocker = loop.call(gate.wait)  # holds the device thread, so the admission below stays queued
    inbox = Inbox(asyncio.get_running_loop(), asyncio.Queue())
    doomed = requests("doomed", 3, max_tokens=50)
    loop.admit(doomed, inbox, engine)
    loop.abort([r.request_id for r in doomed])
    gate.set()
    await blocker
    await loop.call(lambda: None)  # a barrier: had they been admitted, they would have run to the end by now
    await asyncio.sleep(0.05)
    assert inbox.queue.empty()
    loop.stop()


def _drain(queue: asyncio.Queue) -> list[SampleChunk]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items
