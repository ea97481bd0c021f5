"""Coalescing sample chunks: when a Generate stream falls behind, send fewer, larger messages; whole samples.

The device loop produces one chunk per sample per engine step. A stream
forwards them as fast as gRPC writes go; whatever piled up meanwhile is merged
per sample before the next write. A fast consumer still sees every token as
it comes; a slow one (many concurrent streams, a busy machine) gets several
tokens per message instead of falling further behind.
"""

from __future__ import annotations

import asyncio
from itertools import chain

from service.runtime.specs import SampleChunk


def join(chunks: list[SampleChunk]) -> SampleChunk:
    """One chunk with the output of ``chunks`` (one sample's, in order); counts and finish reason are the last one's."""
    last = chunks[-1]
    return SampleChunk(
        prompt_index=last.prompt_index,
        sample_index=last.sample_index,
        token_ids=tuple(chain.from_iterable(c.token_ids for c in chunks)),
        text="".join([c.text for c in chunks]),
        logprobs=tuple(chain.from_iterable(c.logprobs for c in chunks)),
        finish_reason=last.finish_reason,
        prompt_tokens=last.prompt_tokens,
        completion_tokens=last.completion_tokens,
        adapter_version=last.adapter_version,
    )


def coalesce(chunks: list[SampleChunk]) -> list[SampleChunk]:
    """Merge chunks of the same sample, keeping each sample's first position and its order."""
    samples: dict[tuple[int, int], list[SampleChunk]] = {}
    for chunk in chunks:
        samples.setdefault((chunk.prompt_index, chunk.sample_index), []).append(chunk)
    return [parts[0] if len(parts) == 1 else join(parts) for parts in samples.values()]


class WholeSamples:
    """Keeps each sample's chunks and lets the sample out once, joined, when it finishes (Generate's
    ``whole_samples``). An engine that already sends only finished samples passes straight through."""

    def __init__(self) -> None:
        self._partial: dict[tuple[int, int], list[SampleChunk]] = {}

    def add(self, chunk: SampleChunk) -> SampleChunk | None:
        """The whole sample when ``chunk`` finishes it, else None (the chunk is kept, to be joined once at the end)."""
        key = (chunk.prompt_index, chunk.sample_index)
        if chunk.finish_reason is None:
            self._partial.setdefault(key, []).append(chunk)
            return None
        earlier = self._partial.pop(key, None)
        return chunk if earlier is None else join([*earlier, chunk])


def take_ready(queue: asyncio.Queue, first: SampleChunk | BaseException) -> tuple[list[SampleChunk], BaseException | None]:
    """``first`` plus every item already waiting in ``queue``, stopping at an error (returned apart)."""
    items: list[SampleChunk] = []
    item = first
    while True:
        if isinstance(item, BaseException):
            return items, item
        items.append(item)
        if queue.empty():
            return items, None
        item = queue.get_nowait()
