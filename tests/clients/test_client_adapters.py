"""Adapter checkpoints through the Python client and the CLI: save, list, sample from, load, delete."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

import tandem
from tests.support.server import ServerProcess

PROBE = [[5, 6, 7, 8, 9]]
SFT_EXAMPLE = {"prompt": "The people", "completion": " say hello"}
LEARN_FAST = {"learning_rate": 5e-2}


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[tandem.Client]:
    with tandem.Client(server.address) as client:
        yield client


def logprobs(client: tandem.Client, adapter: str = "") -> list[float]:
    return list(client.compute_logprobs(PROBE, adapter=adapter).sequences[0].logprobs)


def test_save_list_sample_load_delete(client: tandem.Client) -> None:
    client.train_step([SFT_EXAMPLE], optimizer=LEARN_FAST)
    saved_at = client.get_model()
    checkpoint = client.save_adapter("client-roundtrip")
    assert (checkpoint.name, checkpoint.step, checkpoint.adapter_version) == ("client-roundtrip", saved_at.step, saved_at.adapter_version)
    assert checkpoint.rank == saved_at.lora.rank and checkpoint.size_bytes > 0
    assert "client-roundtrip" in [c.name for c in client.list_adapters()]

    at_save = logprobs(client)
    assert logprobs(client, "client-roundtrip") == pytest.approx(at_save, abs=1e-4), "the checkpoint holds the weights it was saved with"
    client.train_step([SFT_EXAMPLE], optimizer=LEARN_FAST)
    assert logprobs(client) != pytest.approx(at_save, abs=1e-4), "training moved the current adapter"
    assert logprobs(client, "client-roundtrip") == pytest.approx(at_save, abs=1e-4), "but not the saved one"
    assert client.generate("The people", adapter="client-roundtrip", sampling={"max_tokens": 2})[0].completion_tokens == 2

    restored = client.load_adapter("client-roundtrip")
    assert restored.step == checkpoint.step and restored.adapter_version > checkpoint.adapter_version
    assert logprobs(client) == pytest.approx(at_save, abs=1e-4)

    client.delete_adapter("client-roundtrip")
    assert "client-roundtrip" not in [c.name for c in client.list_adapters()]
    with pytest.raises(tandem.NotFound):
        client.load_adapter("client-roundtrip")


def test_saving_over_a_name_needs_overwrite(client: tandem.Client) -> None:
    client.save_adapter("client-twice", overwrite=True)
    with pytest.raises(tandem.AlreadyExists):
        client.save_adapter("client-twice")
    assert client.save_adapter("client-twice", overwrite=True).name == "client-twice"
    client.delete_adapter("client-twice")


@pytest.mark.parametrize("name", ["../escape", "base", "", "x" * 65])
def test_bad_names_are_invalid_arguments(client: tandem.Client, name: str) -> None:
    with pytest.raises(tandem.InvalidArgument):
        client.save_adapter(name)


async def test_async_client_adapters(server: ServerProcess) -> None:
    async with tandem.AsyncClient(server.address) as client:
        checkpoint = await client.save_adapter("client-async", overwrite=True)
        assert checkpoint.name in [c.name for c in await client.list_adapters()]
        assert (await client.load_adapter("client-async")).checkpoint.name == "client-async"
        await client.delete_adapter("client-async")
        with pytest.raises(tandem.NotFound):
            await client.delete_adapter("client-async")


def cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tandem.cli", "--target", server.address, *args], capture_output=True, text=True, timeout=60)


def cli_json(server: ServerProcess, *args: str) -> dict:
    result = cli(server, "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_cli_adapter_commands(server: ServerProcess) -> None:
    saved = cli_json(server, "adapters", "save", "cli-checkpoint", "--overwrite")
    assert saved["name"] == "cli-checkpoint" and int(saved["size_bytes"]) > 0
    assert "cli-checkpoint" in [c["name"] for c in cli_json(server, "adapters", "list")["checkpoints"]]
    loaded = cli_json(server, "adapters", "load", "cli-checkpoint")
    assert loaded["checkpoint"]["name"] == "cli-checkpoint" and int(loaded["adapter_version"]) > int(saved["adapter_version"])
    assert cli_json(server, "adapters", "delete", "cli-checkpoint") == {"deleted": "cli-checkpoint"}
    missing = cli(server, "adapters", "delete", "cli-checkpoint")
    assert missing.returncode == 1 and missing.stderr.startswith("tandem: NOT_FOUND:")
