"""Collecting a Generate stream into whole completions, one per (prompt, sample)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tandem.v1 import tandem_pb2 as pb

FINISH_REASONS: dict[int, str] = {
    pb.FINISH_REASON_UNSPECIFIED: "",
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_ABORT: "abort",
}


@dataclass
class Completion:
    """One finished sample: everything its stream events carried, joined."""

    prompt_index: int
    sample_index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    """Logprob of each generated token (empty unless requested with ``logprobs``)."""
    top_logprobs: list[dict[int, float]] = field(default_factory=list)
    """Per generated token, the requested top alternatives: token id -> logprob."""
    finish_reason: str = ""
    """"stop", "length" or "abort"; "" while the sample runs."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    adapter_version: int = 0
    """Adapter (policy) version that produced the sample."""

    def add(self, chunk: pb.GenerateResponse) -> None:
        """Append one stream event of this sample."""
        self.text += chunk.text
        self.token_ids.extend(chunk.token_ids)
        for entry in chunk.logprobs:
            self.logprobs.append(entry.logprob)
            self.top_logprobs.append({top.token_id: top.logprob for top in entry.top})
        self.adapter_version = chunk.adapter_version
        if chunk.finish_reason != pb.FINISH_REASON_UNSPECIFIED:
            self.finish_reason = FINISH_REASONS.get(chunk.finish_reason, str(chunk.finish_reason))
            self.prompt_tokens = chunk.usage.prompt_tokens
            self.completion_tokens = chunk.usage.completion_tokens


class CompletionCollector:
    """Feeds stream events into per-sample completions, in arrival order."""

    def __init__(self) -> None:
        self._completions: dict[tuple[int, int], Completion] = {}

    def add(self, chunk: pb.GenerateResponse) -> Completion:
        """Add one event; returns the completion it belongs to."""
        key = (chunk.prompt_index, chunk.sample_index)
        completion = self._completions.get(key)
        if completion is None:
            completion = self._completions[key] = Completion(*key)
        completion.add(chunk)
        return completion

    def completions(self) -> list[Completion]:
        """All completions, ordered by prompt index, then sample index."""
        return [self._completions[key] for key in sorted(self._completions)]
