"""A request whose bytes do not decode gets an error naming the broken field."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from tandem.v1 import tandem_pb2 as pb

from service.errors import InvalidArgument
from service.wire import undecodable_request


def _error_for(raw: bytes, message_type) -> InvalidArgument:
    with pytest.raises(DecodeError) as decode_error:
        message_type.FromString(raw)
    return undecodable_request(raw, message_type.DESCRIPTOR, decode_error.value)


def _with_bad_utf8(message, marker: str) -> bytes:
    return message.SerializeToString().replace(marker.encode(), b"\xff\xfe\xff")


@pytest.mark.parametrize(
    ("raw", "message_type", "field"),
    [
        (_with_bad_utf8(pb.GenerateRequest(prompts=[pb.Prompt(text="ok"), pb.Prompt(text="~~~")]), "~~~"), pb.GenerateRequest, "prompts[1].text"),
        (_with_bad_utf8(pb.GenerateRequest(sampling=pb.SamplingParams(stop=["a", "~~~"])), "~~~"), pb.GenerateRequest, "sampling.stop[1]"),
        (_with_bad_utf8(pb.GenerateRequest(adapter="~~~"), "~~~"), pb.GenerateRequest, "adapter"),
        (_with_bad_utf8(pb.TrainStepRequest(sequences=[pb.TrainSequence(prompt="a", completion="~~~")]), "~~~"), pb.TrainStepRequest, "sequences[0].completion"),
        (_with_bad_utf8(pb.LoadModelRequest(model_name="~~~"), "~~~"), pb.LoadModelRequest, "model_name"),
        (_with_bad_utf8(pb.LoadModelRequest(lora=pb.LoraConfig(target_modules=["~~~"])), "~~~"), pb.LoadModelRequest, "lora.target_modules[0]"),
        (b"\x0a\x04\x0a\x02\xff\xfe", pb.TrainStepRequest, "sequences[0].token_ids"),  # a packed varint that never ends
        (b"\x0a\x03\x2a\x01\x00", pb.TrainStepRequest, "sequences[0].loss_weights"),  # one byte of a 4-byte float
        (b"\x0a\xff", pb.GenerateRequest, "prompts[0]"),  # a length that runs past the end
        (b"\xff\xff\xff", pb.GenerateRequest, "request"),  # not even a key
    ],
    ids=["text", "stop", "adapter", "completion", "model-name", "target-module", "packed-varint", "packed-float", "length", "garbage"],
)
def test_the_broken_field_is_named(raw: bytes, message_type, field: str) -> None:
    error = _error_for(raw, message_type)
    assert error.field == field
    assert message_type.DESCRIPTOR.full_name in str(error)
