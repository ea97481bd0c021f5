"""The asyncio client against the real server: concurrency, streaming, cancellation, deadlines."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

import tandem
from tandem.aio import AsyncClient
from tandem.v1 import tandem_pb2 as pb
from tests.clients.helpers import eventually, metric
from tests.support.server import ServerProcess

SHORT = {"max_tokens": 4, "ignore_eos": True}
LONG = {"max_tokens": 1000, "ignore_eos": True}


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(server.address) as client:
        yield client


def cancelled_generates(server: ServerProcess) -> float:
    return metric(server, "tandem_requests_total", rpc="Generate", code="CANCELLED")


async def test_load_generate_train_generate(client: AsyncClient) -> None:
    phases: list[int] = []
    model = await client.load_model(on_progress=lambda event: phases.append(event.phase))
    assert phases[-1] == pb.LOAD_PHASE_READY and model.adapter_version == 0
    first = await client.generate("The people", sampling=SHORT)
    reply = await client.train_step([{"prompt": "The people", "completion": " say hello"}], optimizer={"learning_rate": 1e-2})
    second = await client.generate("The people", sampling=SHORT)
    assert (first[0].adapter_version, reply.adapter_version, second[0].adapter_version) == (0, 1, 1)
    assert (await client.get_model()).step == 1


async def test_concurrent_generates_all_complete(client: AsyncClient) -> None:
    prompts = ["one", "two", "three", "four"]
    results = await asyncio.gather(*(client.generate(p, sampling=SHORT) for p in prompts))
    assert [len(r) for r in results] == [1, 1, 1, 1]
    assert all(r[0].completion_tokens == 4 and r[0].finish_reason == "length" for r in results)


async def test_stream_yields_events_per_sample(client: AsyncClient) -> None:
    seen: dict[tuple[int, int], int] = {}
    async for chunk in client.generate_stream(["a", "b"], sampling={"n": 2, **SHORT}):
        key = (chunk.prompt_index, chunk.sample_index)
        seen[key] = seen.get(key, 0) + len(chunk.token_ids)
    assert seen == {(0, 0): 4, (0, 1): 4, (1, 0): 4, (1, 1): 4}


async def test_aclose_mid_stream_cancels_on_the_server(client: AsyncClient, server: ServerProcess) -> None:
    before = cancelled_generates(server)
    stream = client.generate_stream("The people", sampling=LONG)
    await anext(stream)
    await stream.aclose()
    assert await asyncio.to_thread(eventually, lambda: cancelled_generates(server) == before + 1)
    assert await asyncio.to_thread(eventually, lambda: metric(server, "tandem_running_requests") == 0, 2.0)


async def test_cancelling_the_task_cancels_the_call(client: AsyncClient, server: ServerProcess) -> None:
    before = cancelled_generates(server)
    task = asyncio.create_task(client.generate("The people", sampling=LONG))
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(eventually, lambda: cancelled_generates(server) == before + 1)


async def test_deadline_and_invalid_argument_are_typed(client: AsyncClient) -> None:
    with pytest.raises(tandem.DeadlineExceeded):
        await client.generate("The people", sampling=LONG, timeout=0.5)
    with pytest.raises(tandem.InvalidArgument, match="temperature"):
        await client.generate("x", sampling={"temperature": -1.0})
    with pytest.raises(tandem.InvalidArgument):
        await client.train_step([])


async def test_tokenize_and_detokenize_concurrently(client: AsyncClient) -> None:
    texts = [f"The people {i}" for i in range(8)]
    results = await asyncio.gather(*(client.tokenize(text) for text in texts))
    ids = [list(result.ids) for (result,) in results]
    assert ids == [list(r.ids) for r in await client.tokenize(texts)], "one call per text or one for all: the same ids"
    assert await client.detokenize(ids, skip_special_tokens=True) == texts
