"""The device loop's ordering guarantees and failure delivery, with the real transformers engine on the tiny model.

The failure tests inject faults (``monkeypatch`` on the engine's methods): the
transformers engine accepts every request the controller lets through, so a
refusal cannot be provoked with a real request on CPU.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from service.errors import EngineFailed, InvalidArgument
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


def refuse(engine, monkeypatch: pytest.MonkeyPatch, request_id: str, error: Exception) -> None:
    """Injected fault: the engine's ``add_request`` raises ``error`` for ``request_id`` and accepts the rest."""
    add_request = engine.add_request

    def add_or_refuse(request: EngineRequest) -> None:
        if request.request_id == request_id:
            raise error
        add_request(request)

    monkeypatch.setattr(engine, "add_request", add_or_refuse)


async def finished(inbox: Inbox, samples: int) -> list[SampleChunk]:
    """Every chunk up to the last of ``samples`` samples' ends (fails the test on an error or after 10 s)."""
    chunks: list[SampleChunk] = []
    while sum(c.finish_reason is not None for c in chunks) < samples:
        item = await asyncio.wait_for(inbox.queue.get(), 10)
        assert isinstance(item, SampleChunk), item
        chunks.append(item)
    return chunks


@pytest.mark.parametrize(
    ("error", "expected", "message"),
    [
        (InvalidArgument("prompts[0]", "too long for the engine"), InvalidArgument, "prompts[0]: too long for the engine"),
        (RuntimeError("KV cache exhausted"), EngineFailed, "the sampling engine failed: RuntimeError: KV cache exhausted"),
    ],
    ids=["domain-error", "other-error"],
)
async def test_a_refused_request_ends_its_call_at_once_and_no_other(engine, monkeypatch, error, expected, message):
    loop = await started_loop(engine)
    aio = asyncio.get_running_loop()
    running = Inbox(aio, asyncio.Queue())
    loop.admit(requests("running", 2, max_tokens=20), running, engine)
    refused = Inbox(aio, asyncio.Queue())
    doomed = requests("refused", 3)
    refuse(engine, monkeypatch, doomed[1].request_id, error)  # the call's first sample is added before the refusal
    loop.admit(doomed, refused, engine)
    later = Inbox(aio, asyncio.Queue())
    loop.admit(requests("later", 1), later, engine)

    failure = await asyncio.wait_for(refused.queue.get(), 1.0)
    assert isinstance(failure, expected) and str(failure) == message
    await finished(running, 2)
    await finished(later, 1)
    await loop.call(lambda: None)
    assert refused.queue.empty()  # the sample added before the refusal was aborted: no chunk of it
    assert not engine.has_unfinished_requests()
    loop.stop()


async def test_work_taken_with_a_failing_abort_still_reaches_its_waiter(engine, monkeypatch):
    """Injected fault: the engine's ``abort`` raises; the call taken together with that abort still runs and answers."""
    loop = await started_loop(engine)
    holding, gate = threading.Event(), threading.Event()

    def hold() -> None:
        holding.set()
        gate.wait()

    blocker = loop.call(hold)
    await asyncio.to_thread(holding.wait)  # the device thread is inside the blocker: what follows is taken together

    def broken_abort(request_ids: list[str]) -> None:
        raise RuntimeError("abort failed (injected)")

    monkeypatch.setattr(engine, "abort", broken_abort)
    answer = loop.call(lambda: 42)
    loop.abort(["gone-0"])
    gate.set()
    await asyncio.wait_for(blocker, 1.0)
    assert await asyncio.wait_for(answer, 1.0) == 42
    loop.stop()


def _drain(queue: asyncio.Queue) -> list[SampleChunk]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items
