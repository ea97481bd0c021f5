"""Tokenize and Detokenize with the loaded model's own tokenizer (the one the engine uses).

Plain functions over a Hugging Face tokenizer, run off the event loop (the
controller hands them to a worker thread). Each checks the request against the
model's bounds and the server's limits and raises :class:`InvalidArgument`
naming the field and the bound; a chat input without a chat template is
FAILED_PRECONDITION. Nothing here imports protobuf.
"""

from __future__ import annotations

from typing import Any

from jinja2 import TemplateError

from service.config import Limits
from service.errors import FailedPrecondition, InvalidArgument
from service.runtime.specs import DetokenizeSpec, SpecialTokens, TokenizedText, TokenizeInputSpec, TokenizeSpec
from service.runtime.validation import ModelBounds, check_token_ids


def special_tokens(tokenizer: Any) -> SpecialTokens:
    """The tokenizer's special token ids and whether it has a chat template (GetModel reports them)."""
    return SpecialTokens(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        unk_token_id=tokenizer.unk_token_id,
        all_special_ids=tuple(sorted(set(tokenizer.all_special_ids))),
        has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
    )


def _check_batch(field: str, count: int, limits: Limits) -> None:
    if count == 0:
        raise InvalidArgument(field, f"give 1 to {limits.max_prompts_per_request} (max_prompts_per_request), got none")
    if count > limits.max_prompts_per_request:
        raise InvalidArgument(field, f"at most {limits.max_prompts_per_request} per request (max_prompts_per_request), got {count}")


def _check_length(field: str, length: int, bounds: ModelBounds) -> None:
    if length > bounds.max_seq_length:
        raise InvalidArgument(field, f"{length} tokens exceed max_seq_length {bounds.max_seq_length}")


def _render_chat(field: str, item: TokenizeInputSpec, tokenizer: Any, add_generation_prompt: bool) -> str:
    """The conversation as the chat template writes it."""
    if not getattr(tokenizer, "chat_template", None):
        raise FailedPrecondition(f"{field}.chat: the model's tokenizer has no chat template (GetModel: special_tokens.has_chat_template); tokenize text instead")
    if not item.chat:
        raise InvalidArgument(f"{field}.chat.messages", "give at least one message")
    messages = [{"role": message.role, "content": message.content} for message in item.chat]
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except TemplateError as error:  # the template refused the conversation (e.g. roles out of order)
        raise InvalidArgument(f"{field}.chat", f"the chat template refused the conversation: {error}") from None


def _tokenize_one(field: str, item: TokenizeInputSpec, spec: TokenizeSpec, tokenizer: Any) -> TokenizedText:
    if item.chat is not None:
        text = _render_chat(field, item, tokenizer, spec.add_generation_prompt)
        add_special_tokens = bool(spec.add_special_tokens)  # the template placed them; add more only when asked
    elif item.text is not None:
        text = item.text
        add_special_tokens = spec.add_special_tokens is not False
    else:
        raise InvalidArgument(field, "set text or chat")
    encoded = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=spec.return_offsets)
    offsets = tuple((int(start), int(end)) for start, end in encoded["offset_mapping"]) if spec.return_offsets else ()
    return TokenizedText(ids=tuple(encoded["input_ids"]), offsets=offsets, rendered_text=text if item.chat is not None else "")


def tokenize(spec: TokenizeSpec, tokenizer: Any, bounds: ModelBounds, limits: Limits) -> list[TokenizedText]:
    """Token ids (and on request character offsets) of each input, in order.

    Text inputs get the tokenizer's special tokens (BOS ...) unless
    ``add_special_tokens`` is False, as a Generate text prompt does; chat
    inputs are rendered with the chat template, which places special tokens
    itself. Every result must fit in max_seq_length.
    """
    _check_batch("inputs", len(spec.inputs), limits)
    if spec.return_offsets and not tokenizer.is_fast:
        raise FailedPrecondition("return_offsets: the model's tokenizer is not a fast (Rust) tokenizer, which offsets need")
    results = []
    for index, item in enumerate(spec.inputs):
        field = f"inputs[{index}]"
        result = _tokenize_one(field, item, spec, tokenizer)
        _check_length(field, len(result.ids), bounds)
        results.append(result)
    return results


def detokenize(spec: DetokenizeSpec, tokenizer: Any, bounds: ModelBounds, limits: Limits) -> list[str]:
    """The text of each token id list, in order; special tokens left out with ``skip_special_tokens``."""
    _check_batch("sequences", len(spec.sequences), limits)
    for index, ids in enumerate(spec.sequences):
        field = f"sequences[{index}].ids"
        _check_length(field, len(ids), bounds)
        check_token_ids(field, ids, bounds)
    return [tokenizer.decode(list(ids), skip_special_tokens=spec.skip_special_tokens) for ids in spec.sequences]
