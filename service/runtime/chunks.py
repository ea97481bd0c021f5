"""Coalescing sample chunks: when a Generate stream falls behind, send fewer, larger messages; whole samples.

The device loop produces one chunk per sample per engine step. A stream
forwards them as fast as gRPC writes go; whatever piled up meanwhile is merged
per sample before the next write. A fast consumer still sees every token as
it comes; a slow one (many concurrent streams, a busy machine) gets several
tokens per message instead of falling further behind.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from service.runtime.specs import SampleChunk


def merge(earlier: SampleChunk, later: SampleChunk) -> SampleChunk:
    """One chunk with both chunks' output; counts and finish reason are the later one's."""
    return replace(
        later,
        token_ids=earlier.token_ids + later.token_ids,
        text=earlier.text + later.text,
        logprobs=earlier.logprobs + later.logprobs,
    )


def coalesce(chunks: list[SampleChunk]) -> list[SampleChunk]:
    """Merge chunks of the same sample, keeping each sample's first position and its order."""
    merged: dict[tuple[int, int], SampleChunk] = {}
    for chunk in chunks:
        key = (chunk.prompt_index, chunk.sample_index)
        merged[key] = merge(merged[key], chunk) if key in merged else chunk
    return list(merged.values())


class WholeSamples:
    """Joins each sample's chunks and lets the sample out once, whole, when it finishes (Generate's
    ``whole_samples``). An engine that already sends only finished samples passes straight through."""

    def __init__(self) -> None:
        self._partial: dict[tuple[int, int], SampleChunk] = {}

    def add(self, chunk: SampleChunk) -> SampleChunk | None:
        """The whole sample when ``chunk`` finishes it, else None (the chunk is kept)."""
        key = (chunk.prompt_index, chunk.sample_index)
        earlier = self._partial.pop(key, None)
        joined = chunk if earlier is None else merge(earlier, chunk)
        if joined.finish_reason is None:
            self._partial[key] = joined
            return None
        return joined


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
