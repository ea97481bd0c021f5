"""Coalescing: chunks that piled up behind a slow stream are merged per sample, in order."""

import asyncio

from service.runtime.chunks import WholeSamples, coalesce, take_ready
from service.runtime.specs import FinishReason, SampleChunk, TokenLogprob


def chunk(prompt: int, sample: int, token: int, text: str, finish: FinishReason | None = None) -> SampleChunk:
    return SampleChunk(prompt, sample, (token,), text, (TokenLogprob(token, -0.5),), finish, 3, token, adapter_version=7)


def test_chunks_of_one_sample_merge_in_order_and_keep_the_last_counts():
    merged = coalesce([chunk(0, 0, 1, "a"), chunk(1, 0, 9, "x"), chunk(0, 0, 2, "b"), chunk(0, 0, 3, "c", FinishReason.STOP)])
    assert [(c.prompt_index, c.token_ids, c.text) for c in merged] == [(0, (1, 2, 3), "abc"), (1, (9,), "x")]
    assert [lp.token_id for lp in merged[0].logprobs] == [1, 2, 3]
    assert merged[0].finish_reason is FinishReason.STOP and merged[0].completion_tokens == 3
    assert merged[1].finish_reason is None


async def test_take_ready_drains_what_is_waiting_and_stops_at_an_error():
    queue: asyncio.Queue = asyncio.Queue()
    error = RuntimeError("engine failed")
    for item in (chunk(0, 0, 2, "b"), error, chunk(0, 0, 3, "c")):
        queue.put_nowait(item)
    ready, raised = take_ready(queue, chunk(0, 0, 1, "a"))
    assert [c.token_ids for c in ready] == [(1,), (2,)] and raised is error
    assert queue.qsize() == 1
    assert take_ready(queue, await queue.get()) == ([chunk(0, 0, 3, "c")], None)


def test_whole_samples_let_each_sample_out_once_when_it_finishes():
    whole = WholeSamples()
    assert whole.add(chunk(0, 0, 1, "a")) is None
    assert whole.add(chunk(0, 1, 9, "x")) is None
    done = whole.add(chunk(0, 0, 2, "b", FinishReason.LENGTH))
    assert (done.token_ids, done.text, done.finish_reason) == ((1, 2), "ab", FinishReason.LENGTH)
    assert [lp.token_id for lp in done.logprobs] == [1, 2]
    assert whole.add(chunk(0, 0, 5, "again", FinishReason.STOP)).token_ids == (5,), "a finished sample is not kept"
    alone = chunk(1, 0, 4, "d", FinishReason.STOP)
    assert whole.add(alone) is alone, "an engine's finished sample passes through as it is"
