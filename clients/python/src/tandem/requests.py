"""Request builders shared by the sync and asyncio clients.

Message arguments take either the protobuf message or a mapping in the
proto's JSON form (field names as in the .proto or in lowerCamelCase, enums
by name), the same JSON grpcurl and the CLI's JSONL files use::

    sampling={"max_tokens": 8, "temperature": 0}
    loss={"function": "LOSS_FUNCTION_PPO_CLIP", "clip_low": 0.2}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from tandem.v1 import tandem_pb2 as pb

M = TypeVar("M", bound=Message)

PromptInput = str | Sequence[int] | pb.Prompt
"""One prompt: text, token ids, or a Prompt message."""
Prompts = str | Sequence[PromptInput]
"""A single text prompt, or a sequence of prompts."""
MessageInput = Message | Mapping[str, Any]

LOSS_FUNCTIONS: dict[str, int] = {
    "cross_entropy": pb.LOSS_FUNCTION_CROSS_ENTROPY,
    "importance_sampling": pb.LOSS_FUNCTION_IMPORTANCE_SAMPLING,
    "ppo_clip": pb.LOSS_FUNCTION_PPO_CLIP,
}
"""Short loss names accepted where a LossConfig is expected."""


def as_message(cls: type[M], value: M | Mapping[str, Any] | None) -> M:
    """``value`` as a ``cls`` message: itself, parsed from its JSON form (ValueError if it does not fit), or empty for None."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        try:
            return json_format.ParseDict(dict(value), cls())
        except json_format.ParseError as error:
            raise ValueError(f"not a {cls.__name__}: {error}") from None
    raise TypeError(f"expected {cls.__name__} or a mapping, got {type(value).__name__}")


def prompt(value: PromptInput) -> pb.Prompt:
    """A Prompt from text, token ids, or a Prompt."""
    if isinstance(value, pb.Prompt):
        return value
    if isinstance(value, str):
        return pb.Prompt(text=value)
    if isinstance(value, Sequence) and all(isinstance(token, int) for token in value):
        return pb.Prompt(token_ids=pb.TokenIds(ids=value))
    raise TypeError(f"a prompt is text, a sequence of token ids or a Prompt, got {value!r}")


def generate_request(
    prompts: Prompts, sampling: MessageInput | None, adapter: str, min_adapter_version: int | None = None, whole_samples: bool = False
) -> pb.GenerateRequest:
    """A GenerateRequest; a bare string is one text prompt; ``min_adapter_version`` None asks for any version;
    ``whole_samples``: each sample comes once, whole, when it finishes (what the collecting ``generate`` asks for)."""
    items: Iterable[PromptInput] = [prompts] if isinstance(prompts, str) else prompts
    return pb.GenerateRequest(
        prompts=[prompt(item) for item in items],
        sampling=as_message(pb.SamplingParams, sampling),
        adapter=adapter,
        min_adapter_version=min_adapter_version,
        whole_samples=whole_samples,
    )


def loss_config(loss: MessageInput | str | None) -> pb.LossConfig:
    """A LossConfig from a message, its JSON form, or a short name ("cross_entropy", "importance_sampling", "ppo_clip")."""
    if isinstance(loss, str):
        if loss not in LOSS_FUNCTIONS:
            raise ValueError(f"unknown loss {loss!r}; one of {', '.join(LOSS_FUNCTIONS)}")
        return pb.LossConfig(function=LOSS_FUNCTIONS[loss])
    return as_message(pb.LossConfig, loss)


def train_request(
    sequences: Iterable[MessageInput],
    loss: MessageInput | str | None,
    optimizer: MessageInput | None,
    accumulate: bool,
) -> pb.TrainStepRequest:
    """A TrainStepRequest from TrainSequence messages or their JSON form."""
    return pb.TrainStepRequest(
        sequences=[as_message(pb.TrainSequence, sequence) for sequence in sequences],
        loss=loss_config(loss),
        optimizer=as_message(pb.OptimizerConfig, optimizer),
        accumulate=accumulate,
    )


def load_request(request: MessageInput | None, fields: Mapping[str, Any]) -> pb.LoadModelRequest:
    """A LoadModelRequest from a message or JSON form, or from keyword fields (not both)."""
    if request is not None and fields:
        raise TypeError("pass either a LoadModelRequest or keyword fields, not both")
    return as_message(pb.LoadModelRequest, request if request is not None else fields)


def logprobs_request(sequences: Iterable[Sequence[int]], adapter: str) -> pb.ComputeLogprobsRequest:
    """A ComputeLogprobsRequest for token-id sequences."""
    return pb.ComputeLogprobsRequest(sequences=[pb.TokenIds(ids=list(ids)) for ids in sequences], adapter=adapter)


TokenizeItem = str | Sequence[Mapping[str, str] | pb.ChatMessage] | pb.Chat | pb.TokenizeInput
"""One Tokenize input: text, a conversation (``{"role": ..., "content": ...}`` messages, ChatMessages or a Chat), or a TokenizeInput."""


def tokenize_input(value: TokenizeItem) -> pb.TokenizeInput:
    """A TokenizeInput from text, a conversation, or a TokenizeInput."""
    if isinstance(value, pb.TokenizeInput):
        return value
    if isinstance(value, str):
        return pb.TokenizeInput(text=value)
    if isinstance(value, pb.Chat):
        return pb.TokenizeInput(chat=value)
    if isinstance(value, Sequence):
        return pb.TokenizeInput(chat=pb.Chat(messages=[as_message(pb.ChatMessage, message) for message in value]))
    raise TypeError(f"a Tokenize input is text, a list of chat messages, a Chat or a TokenizeInput, got {value!r}")


def tokenize_request(
    inputs: str | Sequence[TokenizeItem], add_special_tokens: bool | None, add_generation_prompt: bool, return_offsets: bool
) -> pb.TokenizeRequest:
    """A TokenizeRequest; a bare string is one text, ``add_special_tokens=None`` leaves the server's default."""
    items: Iterable[TokenizeItem] = [inputs] if isinstance(inputs, str) else inputs
    request = pb.TokenizeRequest(
        inputs=[tokenize_input(item) for item in items], add_generation_prompt=add_generation_prompt, return_offsets=return_offsets
    )
    if add_special_tokens is not None:
        request.add_special_tokens = add_special_tokens
    return request


def detokenize_request(sequences: Iterable[Sequence[int]], skip_special_tokens: bool) -> pb.DetokenizeRequest:
    """A DetokenizeRequest for token-id lists."""
    return pb.DetokenizeRequest(sequences=[pb.TokenIds(ids=list(ids)) for ids in sequences], skip_special_tokens=skip_special_tokens)
