"""The GRPO, SFT and Go examples against one trainer and two samplers, switched by one flag (``--samplers``).

The trainer and the samplers share an adapter store; the examples send
training to the trainer and sampling to the samplers. GRPO asks every Generate
for the version its last TrainStep made and stops if a sample reports another,
so finishing at all shows every sample was on-policy, whichever sampler served it.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from tandem.v1 import tandem_pb2 as pb
from tandem.v1 import tandem_pb2_grpc

from tests.clients.helpers import eventually, metric
from tests.clients.test_go_client import go
from tests.examples.runner import EXAMPLES, run_example
from tests.support.server import ServerProcess, start_server

pytestmark = pytest.mark.timeout(600)
SHARED_CORES = ("--torch-threads", "1")  # three servers share the test machine's cores


@dataclass
class ScaleOut:
    """A trainer and its samplers, as real processes."""

    trainer: ServerProcess
    samplers: list[ServerProcess]

    @property
    def sampler_flag(self) -> str:
        """The examples' ``--samplers`` value."""
        return ",".join(sampler.address for sampler in self.samplers)


@pytest.fixture(scope="module")
def scale_out(tiny_cache: Path, server_logs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScaleOut]:
    """``--role trainer`` and two ``--role sampler`` servers on one adapter store, started together."""
    store = tmp_path_factory.mktemp("adapter-store")
    checkpoints = tmp_path_factory.mktemp("checkpoints")
    trainer = start_server(tiny_cache, server_logs, "--role", "trainer", "--adapter-store", str(store), "--checkpoint-root", str(checkpoints), *SHARED_CORES, wait_ready=False)
    sampler_flags = ("--role", "sampler", "--adapter-store", str(store), "--trainer-address", trainer.address, *SHARED_CORES)
    samplers = [start_server(tiny_cache, server_logs, *sampler_flags, wait_ready=False) for _ in range(2)]
    processes = [trainer, *samplers]
    try:
        for process in processes:
            process.wait_ready()
        yield ScaleOut(trainer, samplers)
    finally:
        for process in processes:
            process.process.send_signal(signal.SIGTERM)  # all drain at once
        for process in processes:
            process.stop()


def generate_calls(server: ServerProcess) -> float:
    """Generate calls the server finished with OK."""
    return metric(server, "tandem_requests_total", rpc="Generate", code="OK")


@pytest.mark.timeout(900)
def test_go_example_loads_and_trains_on_the_trainer_and_samples_the_new_version_on_the_samplers(scale_out: ScaleOut) -> None:
    """Runs first, on replicas still at version 0: the example's LoadModel restarts the trainer's
    versions at 0, and until the trainer's next publish reaches them, samplers that served a later
    version keep serving it, which a min_adapter_version of 0 accepts (docs/scale-out.md, Versions)."""
    before = sum(generate_calls(sampler) for sampler in scale_out.samplers)
    result = go("run", "./examples/loop", "-target", scale_out.trainer.address, "-samplers", scale_out.sampler_flag, "-steps", "3", env={"TANDEM_TOKEN": ""})
    lines = result.stdout.splitlines()
    assert lines[1].startswith("before: adapter version 0: ") and lines[5].startswith("after: adapter version 3: ")
    assert sum(generate_calls(sampler) for sampler in scale_out.samplers) == before + 2
    assert generate_calls(scale_out.trainer) == 0


def test_grpo_samples_on_the_samplers_on_policy_and_trains_on_the_trainer(scale_out: ScaleOut, tmp_path: Path) -> None:
    record = tmp_path / "curve.json"
    before = [generate_calls(sampler) for sampler in scale_out.samplers]
    output = run_example(
        "grpo.py", "--address", scale_out.trainer.address, "--samplers", scale_out.sampler_flag,
        "--steps", "4", "--ppo-epochs", "1", "--json", str(record), timeout=540,
    )
    curve = json.loads(record.read_text())
    assert curve["steps"] == 4 and len(curve["rewards"]) == 4
    assert generate_calls(scale_out.trainer) == 0, "no sampling on the trainer"
    assert [generate_calls(sampler) - calls for sampler, calls in zip(scale_out.samplers, before)] == [2, 2], "the four steps' Generate calls spread over both samplers"
    with grpc.insecure_channel(scale_out.trainer.address) as channel:
        version = tandem_pb2_grpc.TandemServiceStub(channel).GetModel(pb.GetModelRequest(), timeout=10).model.adapter_version
    assert f"version {version}" in output and version >= 1, "the trainer trained"
    assert eventually(lambda: all(metric(sampler, "tandem_adapter_version") == version for sampler in scale_out.samplers)), "both samplers serve its newest version"


def test_sft_trains_on_the_trainer_and_samples_the_new_version_from_a_sampler(scale_out: ScaleOut, tmp_path: Path) -> None:
    record = tmp_path / "sft.json"
    before = sum(generate_calls(sampler) for sampler in scale_out.samplers)
    run_example(
        "sft.py", str(EXAMPLES / "data" / "sft_sample.jsonl"), "--address", scale_out.trainer.address,
        "--samplers", scale_out.sampler_flag, "--epochs", "1", "--save", "sft-scale-out", "--json", str(record), timeout=540,
    )
    result = json.loads(record.read_text())
    assert result["steps"] == 3
    assert sum(generate_calls(sampler) for sampler in scale_out.samplers) == before + 1
    with grpc.insecure_channel(scale_out.trainer.address) as channel:
        saved = tandem_pb2_grpc.TandemServiceStub(channel).ListAdapters(pb.ListAdaptersRequest(), timeout=10).checkpoints
    assert [c.name for c in saved] == ["sft-scale-out"], "checkpoints are the trainer's"

