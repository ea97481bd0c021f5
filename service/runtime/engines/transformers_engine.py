"""The transformers engine: continuously batched decoding on the PEFT model itself.

Requests that arrive together are decoded as one left-padded batch with a KV
cache, one token per ``step()``, each sample with its own sampling parameters
and seeded generator. A batch holds samples of one adapter selector (up to
``max_batch_size``); requests for it that arrive while it runs join at the
next step: they are prefilled, the caches left-padded to one width and
stacked, and finished rows dropped, so a long sample never holds short ones
back. Requests for another selector wait until the batch ends. Because the
engine samples on the trainer's own model, a new adapter needs no copy
(``sync_adapter`` only records the version).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import DynamicCache

from service.runtime.adapter_slots import peft_adapter_name
from service.runtime.engines.base import EngineRequest
from service.runtime.sampling import choose_token, token_logprob
from service.runtime.specs import BASE_ADAPTER, FinishReason, SampleChunk

_REPLACEMENT_CHAR = "\ufffd"


@dataclass
class _Row:
    """One sample in the running batch."""

    request: EngineRequest
    generator: torch.Generator
    adapter_version: int
    generated: list[int] = field(default_factory=list)
    emitted_text: str = ""
    finished: bool = False


@dataclass
class _Batch:
    """The batch being decoded."""

    rows: list[_Row]
    cache: DynamicCache
    attention_mask: torch.Tensor
    next_positions: torch.Tensor
    peft_adapter_names: list[str] | None


class TransformersEngine:
    """Engine over a PEFT model: see the module docstring."""

    def __init__(self, model, tokenizer, device: torch.device, eos_token_ids: tuple[int, ...], seed: int, max_batch_size: int = 64) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self._device = device
        self._eos = set(eos_token_ids)
        self._pad_id = eos_token_ids[0]
        self._seeds = random.Random(seed)
        self._max_batch_size = max_batch_size
        self._pending: deque[EngineRequest] = deque()
        self._batch: _Batch | None = None
        self._adapter_version = 0

    def add_request(self, request: EngineRequest) -> None:
        self._pending.append(request)

    def abort(self, request_ids: list[str]) -> None:
        doomed = set(request_ids)
        self._pending = deque(r for r in self._pending if r.request_id not in doomed)
        if self._batch is not None:
            for row in self._batch.rows:
                if row.request.request_id in doomed:
                    row.finished = True

    def has_unfinished_requests(self) -> bool:
        return bool(self._pending) or self._batch is not None

    def running_requests(self) -> int:
        running = 0 if self._batch is None else sum(not r.finished for r in self._batch.rows)
        return running + len(self._pending)

    def sync_adapter(self, version: int) -> float:
        self._adapter_version = version
        return 0.0

    def pause_for_training(self) -> None:
        """Nothing to release: the engine holds no memory outside a running batch."""

    def resume_after_training(self) -> None:
        """Nothing to restore."""

    def add_adapter(self, name: str, adapter_dir: Path) -> None:
        """Load a saved PEFT adapter beside the trained one (frozen; the trained one stays active and trainable)."""
        self._model.load_adapter(str(adapter_dir), adapter_name=_peft_adapter_name(name), is_trainable=False)

    def remove_adapter(self, name: str) -> None:
        """Drop a saved adapter."""
        self._model.delete_adapter(_peft_adapter_name(name))

    def shutdown(self) -> None:
        self._pending.clear()
        self._batch = None
        self._model = None

    def step(self) -> list[tuple[str, SampleChunk]]:
        if self._batch is None:
            if not self._pending:
                return []
            self._batch, logits = self._prefill([self._new_row(r) for r in self._take_wave(self._max_batch_size)])
            outputs = self._advance_rows(self._batch.rows, logits)
        else:
            outputs = self._advance_rows(self._batch.rows, self._decode_one())
            outputs += self._admit_joiners()
        if all(row.finished for row in self._batch.rows):
            self._batch = None
        return outputs

    def _take_wave(self, room: int, adapter: str | None = None) -> list[EngineRequest]:
        """Up to ``room`` pending requests with one adapter selector (the first pending one's by default), in arrival order."""
        adapter = self._pending[0].adapter if adapter is None else adapter
        wave = [r for r in self._pending if r.adapter == adapter][:room]
        taken = {r.request_id for r in wave}
        self._pending = deque(r for r in self._pending if r.request_id not in taken)
        return wave

    def _new_row(self, request: EngineRequest) -> _Row:
        seed = request.sampling.seed if request.sampling.seed is not None else self._seeds.getrandbits(63)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        version = 0 if request.adapter == BASE_ADAPTER else self._adapter_version
        return _Row(request=request, generator=generator, adapter_version=version)

    def _forward(self, batch: _Batch, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        extra = {"adapter_names": batch.peft_adapter_names} if batch.peft_adapter_names else {}
        output = self._model(
            input_ids=input_ids,
            attention_mask=batch.attention_mask,
            position_ids=positions,
            past_key_values=batch.cache,
            use_cache=True,
            logits_to_keep=1,
            **extra,
        )
        return output.logits[:, -1, :].float()

    @torch.inference_mode()
    def _prefill(self, rows: list[_Row]) -> tuple[_Batch, torch.Tensor]:
        """Run the prompts of ``rows`` (left-padded) through the model: a new batch and its next-token logits."""
        width = max(len(r.request.prompt_ids) for r in rows)
        input_ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids = row.request.prompt_ids
            input_ids[i, width - len(ids):] = torch.tensor(ids)
            mask[i, width - len(ids):] = 1
        self._model.eval()
        batch = _Batch(
            rows=rows,
            cache=DynamicCache(),
            attention_mask=mask.to(self._device),
            next_positions=mask.sum(dim=1).to(self._device),
            peft_adapter_names=_peft_names(rows),
        )
        positions = (mask.cumsum(dim=1) - 1).clamp_min(0).to(self._device)
        return batch, self._forward(batch, input_ids.to(self._device), positions)

    def _admit_joiners(self) -> list[tuple[str, SampleChunk]]:
        """Continuous batching: prefill waiting requests of the running batch's adapter and merge them into it.

        Finished rows are dropped from the batch first, so it never holds more
        than the batch size, and a long sample does not keep short ones waiting.
        """
        running = [i for i, row in enumerate(self._batch.rows) if not row.finished]
        room = self._max_batch_size - len(running)
        if not running or room <= 0 or not self._pending:
            return []
        joiners = self._take_wave(room, adapter=self._batch.rows[0].request.adapter)
        if not joiners:
            return []
        joined, logits = self._prefill([self._new_row(r) for r in joiners])
        outputs = self._advance_rows(joined.rows, logits)
        self._batch = _merge(_select(self._batch, running), joined)
        return outputs

    @torch.inference_mode()
    def _decode_one(self) -> torch.Tensor:
        batch = self._batch
        last = [row.generated[-1] if row.generated and not row.finished else self._pad_id for row in batch.rows]
        input_ids = torch.tensor(last, device=self._device).unsqueeze(1)
        ones = torch.ones((len(batch.rows), 1), dtype=batch.attention_mask.dtype, device=self._device)
        batch.attention_mask = torch.cat([batch.attention_mask, ones], dim=1)
        positions = batch.next_positions.unsqueeze(1)
        batch.next_positions = batch.next_positions + 1
        return self._forward(batch, input_ids, positions)

    def _advance_rows(self, rows: list[_Row], logits: torch.Tensor) -> list[tuple[str, SampleChunk]]:
        raw_logprobs = torch.log_softmax(logits, dim=-1).cpu()
        logits = logits.cpu()
        outputs = []
        for i, row in enumerate(rows):
            if row.finished:
                continue
            params = row.request.sampling
            token = choose_token(logits[i], params, row.generator)
            row.generated.append(token)
            finish = self._finish_reason(row, token)
            text_delta, stopped_by_text = ("", False) if row.request.token_ids_only else self._text_delta(row, finished=finish is not None)
            if stopped_by_text:
                finish = FinishReason.STOP
            row.finished = finish is not None
            logprobs = () if params.logprobs is None else (token_logprob(raw_logprobs[i], token, params.logprobs),)
            outputs.append(
                (
                    row.request.request_id,
                    SampleChunk(
                        prompt_index=row.request.prompt_index,
                        sample_index=row.request.sample_index,
                        token_ids=(token,),
                        text=text_delta,
                        logprobs=logprobs,
                        finish_reason=finish,
                        prompt_tokens=len(row.request.prompt_ids),
                        completion_tokens=len(row.generated),
                        adapter_version=row.adapter_version,
                    ),
                )
            )
        return outputs

    def _finish_reason(self, row: _Row, token: int) -> FinishReason | None:
        params = row.request.sampling
        if (token in self._eos and not params.ignore_eos) or token in params.stop_token_ids:
            return FinishReason.STOP
        if len(row.generated) >= params.max_tokens:
            return FinishReason.LENGTH
        return None

    def _text_delta(self, row: _Row, finished: bool) -> tuple[str, bool]:
        """New text since the last chunk, cut before a stop string.

        While the sample runs, the tail that could still be the start of a stop
        string, and an incomplete multi-byte character, are held back.
        """
        stop_strings = row.request.sampling.stop
        text = self._tokenizer.decode(row.generated, skip_special_tokens=True)
        hits = [i for i in (text.find(s) for s in stop_strings) if i >= 0]
        if hits:
            text, finished = text[: min(hits)], True
        if not finished:
            holdback = max((len(s) for s in stop_strings), default=1) - 1
            text = text[: len(text) - holdback].rstrip(_REPLACEMENT_CHAR)
        delta = text[len(row.emitted_text):]
        if delta:
            row.emitted_text = text
        return delta, bool(hits)


def _peft_adapter_name(selector: str) -> str:
    """PEFT's name for an adapter selector in a mixed-batch forward."""
    return "__base__" if selector == BASE_ADAPTER else peft_adapter_name("engine", selector)


def _peft_names(rows: list[_Row]) -> list[str] | None:
    """PEFT adapter names per row for a mixed-batch forward; None for the trained adapter (the active one)."""
    adapter = rows[0].request.adapter
    return None if adapter == "" else [_peft_adapter_name(adapter)] * len(rows)


def _left_pad(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """Zeros prepended along ``dim`` up to ``width`` (masked-out positions)."""
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _select(batch: _Batch, keep: list[int]) -> _Batch:
    """The batch with only the rows at ``keep``."""
    if len(keep) == len(batch.rows):
        return batch
    index = torch.tensor(keep, device=batch.attention_mask.device)
    batch.cache.batch_select_indices(index)
    rows = [batch.rows[i] for i in keep]
    return _Batch(rows, batch.cache, batch.attention_mask[index], batch.next_positions[index], _peft_names(rows))


def _merge(running: _Batch, joined: _Batch) -> _Batch:
    """One batch of both: caches and masks left-padded to the longer one and stacked (RoPE is already in the keys)."""
    width = max(running.attention_mask.shape[1], joined.attention_mask.shape[1])
    cache = DynamicCache()
    for index, (old, new) in enumerate(zip(running.cache.layers, joined.cache.layers)):
        keys = torch.cat([_left_pad(old.keys, width, 2), _left_pad(new.keys, width, 2)])
        values = torch.cat([_left_pad(old.values, width, 2), _left_pad(new.values, width, 2)])
        cache.update(keys, values, index)
    rows = running.rows + joined.rows
    mask = torch.cat([_left_pad(running.attention_mask, width, 1), _left_pad(joined.attention_mask, width, 1)])
    positions = torch.cat([running.next_positions, joined.next_positions])
    return _Batch(rows, cache, mask, positions, _peft_names(rows))
