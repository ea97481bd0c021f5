"""Tokenize and Detokenize through the real server and client, against transformers' own tokenizer
loaded from the same files; chat templates on a copy of the built-in model that has one; every bad
input refused with the status and a message that names the bound."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tandem import Client
from tandem.errors import TandemError
from tandem.v1 import tandem_pb2 as pb
from transformers import AutoTokenizer

from service.tiny_model import ensure_builtin_model
from tests.support.server import ServerProcess, start_server

TEXTS = ["The people", "", "héllo wörld 😀, tabs\tand\nnew lines", "  two leading spaces", "<s> looks special </s>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m.role not in ['system', 'user', 'assistant'] %}{{ raise_exception('unknown role ' + m.role) }}{% endif %}"
    "<s>{{ m.role }}: {{ m.content }}</s>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant:{% endif %}"
)
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
VOCAB = 1024  # the built-in tiny model's
MAX_SEQ = 2048  # the start-up model's max_seq_length (LoadModel's default)
INVALID, FAILED = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION


@pytest.fixture(scope="module")
def reference(tiny_cache: Path):
    """transformers' tokenizer for the built-in model's files."""
    return AutoTokenizer.from_pretrained(ensure_builtin_model("tandem/tiny", tiny_cache))


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[Client]:
    with Client(server.address) as client:
        yield client


@pytest.fixture(scope="module")
def chat_root(tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model root holding ``chat``: the built-in model with a chat template added."""
    root = tmp_path_factory.mktemp("chat-root")
    tokenizer = AutoTokenizer.from_pretrained(ensure_builtin_model("tandem/tiny", tiny_cache))
    tokenizer.chat_template = CHAT_TEMPLATE
    shutil.copytree(ensure_builtin_model("tandem/tiny", tiny_cache), root / "chat")
    tokenizer.save_pretrained(root / "chat")
    return root


@pytest.fixture(scope="module")
def chat_client(tiny_cache: Path, server_logs: Path, chat_root: Path) -> Iterator[Client]:
    """A client of a server whose start-up model is the copy with a chat template."""
    process = start_server(tiny_cache, server_logs, "--model-root", str(chat_root), "--model", "chat")
    with Client(process.address) as client:
        yield client
    process.stop()


def test_text_ids_are_transformers_ids(client: Client, reference) -> None:
    assert [list(r.ids) for r in client.tokenize(TEXTS)] == [reference(t)["input_ids"] for t in TEXTS]
    plain = client.tokenize(TEXTS, add_special_tokens=False)
    assert [list(r.ids) for r in plain] == [reference(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    assert all(r.rendered_text == "" and not r.offsets for r in plain)


def test_a_bare_string_is_one_input_and_gets_bos(client: Client, reference) -> None:
    (result,) = client.tokenize("The people")
    assert result.ids[0] == reference.bos_token_id and len(result.ids) > 1


def test_detokenize_round_trips_and_matches_transformers(client: Client, reference) -> None:
    with_bos = [list(r.ids) for r in client.tokenize(TEXTS)]
    assert client.detokenize(with_bos) == [reference.decode(ids) for ids in with_bos]
    skipped = client.detokenize(with_bos, skip_special_tokens=True)
    assert skipped == [reference.decode(ids, skip_special_tokens=True) for ids in with_bos]
    assert skipped[:-1] == TEXTS[:-1] and skipped[-1] == " looks special ", "text that spells a special token is that token"
    plain = [list(r.ids) for r in client.tokenize(TEXTS, add_special_tokens=False)]
    assert client.detokenize(plain) == TEXTS  # byte-level BPE loses nothing
    assert client.detokenize([[], [reference.eos_token_id]]) == ["", reference.eos_token]


def test_offsets_are_transformers_character_spans(client: Client, reference) -> None:
    results = client.tokenize(TEXTS, return_offsets=True)
    for text, result in zip(TEXTS, results, strict=True):
        expected = reference(text, return_offsets_mapping=True)["offset_mapping"]
        spans = [(span.start, span.end) for span in result.offsets]
        assert spans == [tuple(span) for span in expected] and len(spans) == len(result.ids)
        assert spans[0] == (0, 0), "the BOS the tokenizer added has an empty span"
        assert all(0 <= start <= end <= len(text) for start, end in spans)
    # Spans are in characters (code points): the emoji is one character, whatever its byte tokens.
    emoji = TEXTS[2].index("😀")
    assert (emoji, emoji + 1) in [(s.start, s.end) for s in results[2].offsets]


def test_tokenized_prompt_samples_what_the_text_prompt_does(client: Client) -> None:
    """The ids Tokenize returns are the ones Generate feeds the engine for the same text."""
    greedy = {"max_tokens": 6, "temperature": 0, "ignore_eos": True}
    (ids,) = client.tokenize("The people")
    from_text = client.generate("The people", sampling=greedy)[0]
    from_ids = client.generate([list(ids.ids)], sampling=greedy)[0]
    assert from_ids.token_ids == from_text.token_ids and from_ids.prompt_tokens == len(ids.ids)
    assert client.detokenize([from_text.token_ids]) == [from_text.text]


def test_get_model_reports_the_special_tokens(client: Client, reference) -> None:
    model = client.get_model()
    special = model.special_tokens
    assert model.vocab_size == VOCAB
    assert (special.bos_token_id, special.eos_token_id, special.pad_token_id, special.unk_token_id) == (
        reference.bos_token_id,
        reference.eos_token_id,
        reference.pad_token_id,
        reference.unk_token_id,
    )
    assert list(special.all_special_ids) == sorted(set(reference.all_special_ids))
    assert not special.has_chat_template


def test_chat_is_rendered_with_the_template(chat_client: Client, chat_root: Path) -> None:
    reference = AutoTokenizer.from_pretrained(chat_root / "chat")
    assert chat_client.get_model().special_tokens.has_chat_template
    for cue in (False, True):
        text, chat = chat_client.tokenize(["Name a colour.", CHAT], add_generation_prompt=cue, return_offsets=True)
        rendered = reference.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=cue)
        assert chat.rendered_text == rendered and rendered.endswith("<s>assistant:") == cue
        assert list(chat.ids) == reference.apply_chat_template(CHAT, add_generation_prompt=cue)["input_ids"]
        assert [(s.start, s.end) for s in chat.offsets] == [tuple(s) for s in reference(rendered, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]
        assert list(text.ids) == reference("Name a colour.")["input_ids"] and text.rendered_text == ""
    (doubled,) = chat_client.tokenize([CHAT], add_special_tokens=True)
    assert list(doubled.ids) == reference(reference.apply_chat_template(CHAT, tokenize=False))["input_ids"]


def test_chat_the_template_refuses_is_invalid_argument(chat_client: Client) -> None:
    with pytest.raises(TandemError) as error:
        chat_client.tokenize([[{"role": "robot", "content": "beep"}]])
    assert error.value.code == INVALID and "inputs[0].chat" in error.value.details and "unknown role robot" in error.value.details
    with pytest.raises(TandemError) as error:
        chat_client.tokenize([[]])
    assert error.value.code == INVALID and "inputs[0].chat.messages" in error.value.details


def test_chat_without_a_template_is_failed_precondition(client: Client) -> None:
    with pytest.raises(TandemError) as error:
        client.tokenize(["fine", CHAT])
    assert error.value.code == FAILED and "inputs[1].chat" in error.value.details and "chat template" in error.value.details


def _ids(*ids: int) -> pb.TokenIds:
    return pb.TokenIds(ids=list(ids))


BAD = [
    ("tokenize-empty-batch", "Tokenize", pb.TokenizeRequest(), "inputs: give 1 to 256 (max_prompts_per_request)"),
    ("tokenize-too-many", "Tokenize", pb.TokenizeRequest(inputs=[pb.TokenizeInput(text="a")] * 257), "at most 256 per request (max_prompts_per_request), got 257"),
    ("tokenize-input-unset", "Tokenize", pb.TokenizeRequest(inputs=[pb.TokenizeInput(text="a"), pb.TokenizeInput()]), "inputs[1]: set text or chat"),
    ("tokenize-text-past-context", "Tokenize", pb.TokenizeRequest(inputs=[pb.TokenizeInput(text="people " * 3000)]), f"exceed max_seq_length {MAX_SEQ}"),
    ("detokenize-empty-batch", "Detokenize", pb.DetokenizeRequest(), "sequences: give 1 to 256 (max_prompts_per_request)"),
    ("detokenize-too-many", "Detokenize", pb.DetokenizeRequest(sequences=[_ids(5)] * 257), "(max_prompts_per_request), got 257"),
    ("detokenize-id-at-vocab-size", "Detokenize", pb.DetokenizeRequest(sequences=[_ids(5, VOCAB)]), f"sequences[0].ids[1]: token id {VOCAB} is outside the vocabulary [0, {VOCAB})"),
    ("detokenize-max-uint32", "Detokenize", pb.DetokenizeRequest(sequences=[_ids(5), _ids(2**32 - 1)]), f"sequences[1].ids[0]: token id {2**32 - 1} is outside the vocabulary [0, {VOCAB})"),
    ("detokenize-past-context", "Detokenize", pb.DetokenizeRequest(sequences=[_ids(*[5] * (MAX_SEQ + 1))]), f"{MAX_SEQ + 1} tokens exceed max_seq_length {MAX_SEQ}"),
]


@pytest.mark.parametrize(("rpc", "request_", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_invalid_argument_naming_the_bound(stub, rpc: str, request_, message: str) -> None:
    with pytest.raises(grpc.RpcError) as error:
        getattr(stub, rpc)(request_, timeout=60)
    assert error.value.code() == INVALID, error.value.details()
    assert message in error.value.details()


def test_without_a_model_both_are_failed_precondition(tiny_cache: Path, server_logs: Path) -> None:
    process = start_server(tiny_cache, server_logs, "--model", "none", wait_ready=False)
    try:
        with Client(process.address) as client:
            for call in (lambda: client.tokenize("a"), lambda: client.detokenize([[5]])):
                with pytest.raises(TandemError) as error:
                    call()
                assert error.value.code == FAILED and "LoadModel" in error.value.details
    finally:
        process.stop()
