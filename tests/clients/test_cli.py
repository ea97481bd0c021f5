"""The ``tandem`` CLI as a subprocess against the real server, ``--json`` output parsed."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tandem
from tests.support.server import ServerProcess


def cli(server: ServerProcess | str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m tandem.cli --target ADDRESS ARGS...``."""
    target = server if isinstance(server, str) else server.address
    command = [sys.executable, "-m", "tandem.cli", "--target", target, *args]
    return subprocess.run(command, capture_output=True, text=True, input=stdin, timeout=120)


def cli_json(server: ServerProcess, *args: str) -> dict:
    result = cli(server, "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_console_script_is_installed(server: ServerProcess) -> None:
    script = shutil.which("tandem")
    assert script, "pip install ./clients/python puts `tandem` on PATH"
    result = subprocess.run([script, "status", "--target", server.address, "--json"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["model"]["model_name"] == "tandem/tiny"


def test_load_shows_progress_on_stderr_and_the_model_on_stdout(server: ServerProcess) -> None:
    result = cli(server, "load", "--max-seq-length", "1024", "--lora-rank", "4")
    assert result.returncode == 0, result.stderr
    phases = [line.split()[0] for line in result.stderr.splitlines()]
    assert phases[0] == "resolve" and phases[-1] == "ready" and "weights" in phases
    assert "[##############################] 2/2 layers" in result.stderr
    assert "LoRA rank 4" in result.stdout and "max_seq_length 1024" in result.stdout


def test_load_json_is_the_model(server: ServerProcess) -> None:
    model = cli_json(server, "load", "--lora-rank", "16", "--request", '{"max_seq_length": 2048}')
    assert model["lora"]["rank"] == 16 and model["max_seq_length"] == 2048
    assert model["adapter_version"] == "0", "uint64 fields print as strings, as in proto JSON"
    assert cli_json(server, "status")["model"]["lora"]["rank"] == 16


def test_generate_streams_the_same_text_the_client_collects(server: ServerProcess) -> None:
    result = cli(server, "generate", "The people", "--max-tokens", "6", "--temperature", "0")
    assert result.returncode == 0, result.stderr
    with tandem.Client(server.address) as client:
        expected = client.generate("The people", sampling={"max_tokens": 6, "temperature": 0})[0]
    assert result.stdout == expected.text + "\n"
    assert "(length, 6 tokens, adapter version" in result.stderr


def test_generate_json_has_every_sample(server: ServerProcess) -> None:
    output = cli_json(server, "generate", "a", "b", "-n", "2", "--max-tokens", "3", "--ignore-eos", "--logprobs", "1")
    samples = [(c["prompt_index"], c["sample_index"]) for c in output["completions"]]
    assert samples == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(len(c["token_ids"]) == 3 == len(c["logprobs"]) and c["finish_reason"] == "length" for c in output["completions"])


def test_generate_several_samples_prints_each_with_a_header(server: ServerProcess) -> None:
    result = cli(server, "generate", "a", "-n", "2", "--max-tokens", "2", "--ignore-eos")
    headers = [line for line in result.stdout.splitlines() if line.startswith("--- prompt 0, sample")]
    assert sorted(headers) == [f"--- prompt 0, sample {i} (length, 2 tokens, adapter version {headers[0].split()[-1]}" for i in (0, 1)]


def test_train_from_jsonl_takes_one_step_per_batch(server: ServerProcess, tmp_path: Path) -> None:
    lines = [{"prompt": "The people", "completion": " say hello"}, {"prompt": "A cat", "completion": " sat"}, {"token_ids": [5, 6, 7, 8]}]
    data = tmp_path / "sft.jsonl"
    data.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    before = int(cli_json(server, "status")["model"]["adapter_version"])
    steps = cli_json(server, "train", str(data), "--batch-size", "2", "--epochs", "2", "--lr", "1e-3")["steps"]
    assert [int(s["adapter_version"]) for s in steps] == [before + 1, before + 2, before + 3, before + 4]
    assert all(s["outcome"] == "STEP_OUTCOME_APPLIED" and math.isfinite(s["loss"]) for s in steps)
    assert [s["tokens"] > 0 for s in steps] == [True] * 4


def test_train_reads_stdin_and_prints_a_line_per_step(server: ServerProcess) -> None:
    result = cli(server, "train", "-", stdin='{"prompt": "x", "completion": " y"}\n')
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1 and "applied" in result.stdout


def test_bad_jsonl_names_the_line_and_exits_2(server: ServerProcess, tmp_path: Path) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "ok", "completion": " fine"}\n{"prompt": 3, "nonsense": true}\n')
    result = cli(server, "train", str(data))
    assert result.returncode == 2
    assert f"{data}:2:" in result.stderr


def test_unknown_request_field_exits_2_before_calling(server: ServerProcess) -> None:
    result = cli(server, "load", "--request", '{"bogus": 1}')
    assert result.returncode == 2
    assert result.stderr.startswith("tandem: not a LoadModelRequest") and "bogus" in result.stderr


def test_server_error_prints_the_code_and_exits_1(server: ServerProcess) -> None:
    result = cli(server, "generate", "x", "--max-tokens", "0")
    assert result.returncode == 1
    assert result.stderr.startswith("tandem: INVALID_ARGUMENT: ") and "max_tokens" in result.stderr


def test_unreachable_target_is_unavailable_within_the_timeout() -> None:
    with __import__("socket").socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    result = cli(address, "status", "--timeout", "1")
    assert result.returncode == 1 and "UNAVAILABLE" in result.stderr


def test_flags_go_before_or_after_the_command(server: ServerProcess) -> None:
    after = subprocess.run([sys.executable, "-m", "tandem.cli", "status", "--json", "--target", server.address], capture_output=True, text=True, timeout=60)
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout)["loaded"] is True


@pytest.mark.parametrize("command", [["status"], ["load"], ["generate", "x"], ["train", "f"], ["adapters", "list"], ["adapters", "save", "n"]])
def test_every_command_has_help(command: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "tandem.cli", *command, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "usage: tandem" in result.stdout


def test_tokenize_and_detokenize_round_trip(server: ServerProcess, tmp_path: Path) -> None:
    with tandem.Client(server.address) as client:
        (expected,) = client.tokenize("The people")
    result = cli(server, "tokenize", "The people")
    assert result.returncode == 0, result.stderr
    assert [int(token) for token in result.stdout.split()] == list(expected.ids)
    back = cli(server, "detokenize", *result.stdout.split(), "--skip-special-tokens")
    assert back.returncode == 0 and back.stdout == "The people\n", back.stderr
    document = cli_json(server, "tokenize", "The people", "--no-special-tokens", "--offsets")
    (only,) = document["results"]
    assert only["ids"] == list(expected.ids)[1:] and only["offsets"][0] == {"start": 0, "end": 3}
    chat = tmp_path / "chat.json"
    chat.write_text(json.dumps([{"role": "user", "content": "hi"}]))
    refused = cli(server, "tokenize", "--chat", str(chat))
    assert refused.returncode == 1 and "FAILED_PRECONDITION" in refused.stderr and "chat template" in refused.stderr
