"""The ordering barrier of the vLLM host: generations share it, model work holds it alone, first come first served."""

from __future__ import annotations

import asyncio

from service.runtime.barrier import OrderedBarrier


async def hold(barrier: OrderedBarrier, kind: str, name: str, log: list[str], release: asyncio.Event) -> None:
    async with barrier.shared() if kind == "shared" else barrier.exclusive():
        log.append(f"{name} in")
        await release.wait()
        log.append(f"{name} out")


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_generations_share_and_a_call_waits_for_those_before_it():
    barrier, log = OrderedBarrier(), []
    first, second, call = asyncio.Event(), asyncio.Event(), asyncio.Event()
    tasks = [
        asyncio.create_task(hold(barrier, "shared", "g1", log, first)),
        asyncio.create_task(hold(barrier, "shared", "g2", log, second)),
    ]
    await settle()
    tasks.append(asyncio.create_task(hold(barrier, "exclusive", "train", log, call)))
    await settle()
    assert log == ["g1 in", "g2 in"] and barrier.shared_holders == 2 and barrier.waiting == 1
    first.set()
    await settle()
    assert "train in" not in log, "the call must wait for every generation admitted before it"
    second.set()
    await settle()
    assert log[-1] == "train in"
    call.set()
    await asyncio.gather(*tasks)


async def test_a_generation_that_arrives_after_a_call_waits_for_it():
    barrier, log = OrderedBarrier(), []
    running, call, late = asyncio.Event(), asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(hold(barrier, "shared", "g1", log, running))]
    await settle()
    tasks.append(asyncio.create_task(hold(barrier, "exclusive", "train", log, call)))
    await settle()
    tasks.append(asyncio.create_task(hold(barrier, "shared", "g2", log, late)))
    await settle()
    assert log == ["g1 in"], "a later generation must not overtake the waiting call"
    running.set()
    await settle()
    assert log == ["g1 in", "g1 out", "train in"]
    call.set()
    await settle()
    assert log[-2:] == ["train out", "g2 in"]
    late.set()
    await asyncio.gather(*tasks)


async def test_a_waiter_that_goes_away_does_not_block_those_behind_it():
    barrier, log = OrderedBarrier(), []
    running, never, late = asyncio.Event(), asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(hold(barrier, "shared", "g1", log, running))
    await settle()
    cancelled = asyncio.create_task(hold(barrier, "exclusive", "train", log, never))
    await settle()
    behind = asyncio.create_task(hold(barrier, "shared", "g2", log, late))
    await settle()
    cancelled.cancel()
    await settle()
    assert log == ["g1 in", "g2 in"] and barrier.waiting == 0
    running.set()
    late.set()
    await asyncio.gather(first, behind)
    assert barrier.shared_holders == 0
