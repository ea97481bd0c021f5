"""Model work crossing to vLLM's engine process: results, domain errors and the adapter version come back intact."""

from __future__ import annotations

import pytest

from service.errors import EngineFailed, InvalidArgument, ResourceExhausted
from service.runtime.engines.worker_calls import decode_reply, encode_call, run_encoded


class Model:
    """Stands in for the engine process's LoadedModel: all a call reads is the adapter version."""

    def __init__(self, version: int) -> None:
        self.version = version


def add_to_version(model: Model, amount: int) -> int:
    model.version += amount
    return model.version * 10


def refuse(model: Model, field: str) -> None:
    raise InvalidArgument(field, "must be positive")


def run_out_of_memory(model: Model) -> None:
    raise ResourceExhausted("out of accelerator memory in TrainStep: send fewer sequences")


def break_down(model: Model) -> None:
    raise RuntimeError("CUDA error: an illegal memory access")


def call(model: Model | None, fn, *args):
    return decode_reply(run_encoded(encode_call(fn, args), model, lambda: 0 if model is None else model.version))


def test_a_result_comes_back_with_the_version_after_the_call():
    assert call(Model(3), add_to_version, 2) == (50, 5)


def test_domain_errors_keep_their_class_message_and_field():
    with pytest.raises(InvalidArgument) as refused:
        call(Model(0), refuse, "lora.rank")
    assert str(refused.value) == "lora.rank: must be positive" and refused.value.field == "lora.rank"
    with pytest.raises(ResourceExhausted, match="send fewer sequences"):
        call(Model(0), run_out_of_memory)


def test_anything_else_becomes_engine_failed_with_its_words():
    with pytest.raises(EngineFailed, match="RuntimeError: CUDA error: an illegal memory access"):
        call(Model(0), break_down)


def test_a_call_before_the_trainer_is_built_is_refused():
    with pytest.raises(EngineFailed, match="LoadModel"):
        call(None, add_to_version, 1)
