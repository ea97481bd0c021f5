"""The README's grpcurl walk-through, run verbatim with the real grpcurl against a live server.

The commands are read from the ``<!-- grpcurl-walkthrough -->`` block of
README.md; only the address 127.0.0.1:50051 is replaced by the test server's.
Each must succeed, and what it prints must make sense for its RPC.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.support.server import REPO, ServerProcess, require_tool

README_ADDRESS = "127.0.0.1:50051"
MARKER = "<!-- grpcurl-walkthrough -->"


def walkthrough_commands(readme: Path = REPO / "README.md") -> list[str]:
    """The shell lines of the fenced block that follows the marker."""
    text = readme.read_text()
    block = re.search(re.escape(MARKER) + r"\s*```\w*\n(?P<body>.*?)```", text, re.S)
    assert block, f"README.md has no {MARKER} block"
    return [line for line in block["body"].splitlines() if line.strip() and not line.lstrip().startswith("#")]


def json_documents(output: str) -> list[dict]:
    """The JSON objects grpcurl printed, one per response message."""
    decoder, documents, position = json.JSONDecoder(), [], 0
    while position < len(output):
        if output[position].isspace():
            position += 1
            continue
        document, position = decoder.raw_decode(output, position)
        documents.append(document)
    return documents


class Walkthrough:
    """Checks each command's output, remembering the adapter version as the loop goes."""

    def __init__(self) -> None:
        self.adapter_version: int | None = None
        self.generations: list[dict] = []

    def check(self, command: str, output: str) -> None:
        """Check one command's output; the command's last word says what it did."""
        checkers: dict[str, Callable[[str], None]] = {
            "list": self.listed,
            "tandem.v1.TandemService": self.described,
            "tandem.v1.TandemService.Generate": self.described_method,
            "grpc.health.v1.Health/Check": self.healthy,
            "tandem.v1.TandemService/LoadModel": self.loaded,
            "tandem.v1.TandemService/Generate": self.generated,
            "tandem.v1.TandemService/TrainStep": self.trained,
            "tandem.v1.TandemService/Tokenize": self.tokenized,
        }
        action = command.split()[-1]
        assert action in checkers, f"no check for {command!r}: add one"
        checkers[action](output)

    def listed(self, output: str) -> None:
        assert {"tandem.v1.TandemService", "grpc.health.v1.Health"} <= set(output.split())

    def described(self, output: str) -> None:
        for rpc in ("LoadModel", "Generate", "TrainStep", "ComputeLogprobs", "SaveAdapter"):
            assert f"rpc {rpc} (" in output

    def described_method(self, output: str) -> None:
        assert "rpc Generate ( .tandem.v1.GenerateRequest ) returns ( stream .tandem.v1.GenerateResponse );" in output

    def healthy(self, output: str) -> None:
        assert json_documents(output) == [{"status": "SERVING"}]

    def loaded(self, output: str) -> None:
        events = json_documents(output)
        assert all("progress" in event for event in events[:-1]) and len(events) > 1
        model = events[-1]["model"]
        assert model["max_seq_length"] == 512 and model["lora"]["rank"] == 16
        self.adapter_version = int(model.get("adapter_version", 0))

    def generated(self, output: str) -> None:
        chunks = json_documents(output)
        assert chunks[-1]["finish_reason"] in ("FINISH_REASON_STOP", "FINISH_REASON_LENGTH")
        assert "".join(chunk.get("text", "") for chunk in chunks), "some text came back"
        versions = {int(chunk.get("adapter_version", 0)) for chunk in chunks}
        assert versions == {self.adapter_version}, "samples report the current adapter version"
        self.generations.append({"text": "".join(c.get("text", "") for c in chunks), "version": versions.pop()})

    def tokenized(self, output: str) -> None:
        ((result,),) = [document["results"] for document in json_documents(output)]
        assert len(result["ids"]) >= 2 and all(isinstance(token, int) for token in result["ids"])
        assert len(result["offsets"]) == len(result["ids"]) and result["offsets"][-1]["end"] == len("The people")

    def trained(self, output: str) -> None:
        (reply,) = json_documents(output)
        assert reply["outcome"] == "STEP_OUTCOME_APPLIED" and reply["loss"] > 0
        assert self.adapter_version is not None
        assert int(reply["adapter_version"]) == self.adapter_version + 1, "the step moved the adapter version"
        self.adapter_version += 1


def test_readme_walkthrough_runs_verbatim(server: ServerProcess) -> None:
    grpcurl = require_tool("grpcurl")
    env = {**os.environ, "PATH": f"{Path(grpcurl).parent}{os.pathsep}{os.environ['PATH']}"}
    commands = walkthrough_commands()
    assert [c.split()[0] for c in commands] == ["grpcurl"] * len(commands)
    walkthrough = Walkthrough()
    for command in commands:
        assert README_ADDRESS in command, command
        live = command.replace(README_ADDRESS, server.address)
        result = subprocess.run(live, shell=True, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{command}\n{result.stderr}"
        walkthrough.check(command, result.stdout)
    rpcs = {command.split()[-1] for command in commands}
    assert {"tandem.v1.TandemService/LoadModel", "tandem.v1.TandemService/Generate", "tandem.v1.TandemService/TrainStep"} <= rpcs
    first, last = walkthrough.generations[0], walkthrough.generations[-1]
    assert last["version"] > first["version"], "the walk-through samples again after training"
