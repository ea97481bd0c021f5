"""One trainer and two samplers sharing an adapter store, as real processes on loopback.

Every TrainStep reaches both samplers within 2 s, and they then sample exactly
what the trainer samples at that version; samplers refuse training and name
the trainer; min_adapter_version waits for a later publish or fails in time; a
sampler started late catches up before it reports SERVING; a publish killed
with SIGKILL halfway is never loaded. The kills hit a helper process
(tests/support/publish_loop.py) that runs the store's publish code against the
same directory, standing in for a trainer killed mid-publish.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from tandem.v1 import tandem_pb2 as pb
from tandem.v1 import tandem_pb2_grpc

from service.runtime.adapter_store import AdapterStore
from tests.support.server import REPO, SERVICE_NAME, ServerProcess, start_server

FOLLOW_SECONDS = 2.0
TRAIN = pb.TrainStepRequest(sequences=[pb.TrainSequence(prompt="The people", completion=" say hello")], optimizer=pb.OptimizerConfig(learning_rate=2e-2))
SERVER_FLAGS = ("--torch-threads", "1")  # four servers share the test machine's cores
KILL_ROUNDS = 2


@dataclass
class Replica:
    """A server process and a stub on it."""

    process: ServerProcess
    channel: grpc.Channel
    stub: tandem_pb2_grpc.TandemServiceStub

    @classmethod
    def connect(cls, process: ServerProcess) -> Replica:
        channel = grpc.insecure_channel(process.address)
        return cls(process, channel, tandem_pb2_grpc.TandemServiceStub(channel))

    def model(self) -> pb.GetModelResponse:
        return self.stub.GetModel(pb.GetModelRequest(), timeout=30)

    def version(self) -> int:
        return self.model().model.adapter_version

    def metric(self, name: str, **labels: str) -> float:
        with urllib.request.urlopen(self.process.metrics_url, timeout=10) as reply:
            text = reply.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
        raise KeyError(name)

    def close(self) -> None:
        self.channel.close()
        self.process.stop()


@dataclass
class Sample:
    """A greedy sample: its token ids, their logprobs and the adapter version that made it."""

    token_ids: list[int]
    logprobs: list[float]
    adapter_version: int


def greedy(replica: Replica, timeout: float = 60, **request_fields: int) -> Sample:
    request = pb.GenerateRequest(prompts=[pb.Prompt(text="The people")], sampling=pb.SamplingParams(max_tokens=8, temperature=0, logprobs=0), **request_fields)
    ids, logprobs, versions = [], [], set()
    for chunk in replica.stub.Generate(request, timeout=timeout):
        ids += chunk.token_ids
        logprobs += [lp.logprob for lp in chunk.logprobs]
        versions.add(chunk.adapter_version)
    (version,) = versions
    return Sample(ids, logprobs, version)


def wait_for_version(replica: Replica, version: int, deadline: float) -> None:
    """Poll GetModel until ``replica`` serves ``version``; fail after ``deadline`` (monotonic)."""
    while (served := replica.version()) != version:
        assert time.monotonic() < deadline, f"{replica.process.address} still serves version {served}, not {version}"
        time.sleep(0.02)


def start_sampler(tiny_cache: Path, server_logs: Path, store: Path, trainer: ServerProcess, wait_ready: bool = True) -> ServerProcess:
    flags = ("--role", "sampler", "--adapter-store", str(store), "--trainer-address", trainer.address, *SERVER_FLAGS)
    return start_server(tiny_cache, server_logs, *flags, wait_ready=wait_ready)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("adapter-store")


@pytest.fixture(scope="module")
def cluster(tiny_cache: Path, server_logs: Path, store: Path) -> Iterator[tuple[Replica, list[Replica]]]:
    """A trainer and two samplers on one store (started together, then waited for)."""
    trainer = start_server(tiny_cache, server_logs, "--role", "trainer", "--adapter-store", str(store), *SERVER_FLAGS, wait_ready=False)
    samplers = [start_sampler(tiny_cache, server_logs, store, trainer, wait_ready=False) for _ in range(2)]
    replicas = [Replica.connect(p) for p in (trainer, *samplers)]
    try:
        for process in (trainer, *samplers):
            process.wait_ready()
        yield replicas[0], replicas[1:]
    finally:
        for replica in replicas:
            replica.process.process.send_signal(signal.SIGTERM)  # all drain at once
        for replica in replicas:
            replica.close()


def test_every_step_reaches_both_samplers_within_2_s_and_they_sample_as_the_trainer(cluster: tuple[Replica, list[Replica]]) -> None:
    trainer, samplers = cluster
    outputs = set()
    for _ in range(5):
        version = trainer.stub.TrainStep(TRAIN, timeout=60).adapter_version
        deadline = time.monotonic() + FOLLOW_SECONDS
        for sampler in samplers:
            wait_for_version(sampler, version, deadline)
        expected = greedy(trainer)
        assert expected.adapter_version == version
        for sampler in samplers:
            got = greedy(sampler)
            assert (got.adapter_version, got.token_ids) == (version, expected.token_ids)
            assert got.logprobs == pytest.approx(expected.logprobs, abs=1e-4)
        outputs.add(tuple(expected.token_ids))
    assert len(outputs) > 1, "training changed what the policy samples (else equal samples would prove little)"
    for sampler in samplers:
        reply = sampler.model()
        assert (reply.role, reply.trainer_address, reply.model.published_adapter_version) == (pb.SERVER_ROLE_SAMPLER, trainer.process.address, version)
        assert sampler.metric("tandem_adapter_version") == version
        assert sampler.metric("tandem_adapter_publish_lag_seconds_count") >= 5
    reply = trainer.model()
    assert (reply.role, reply.trainer_address, reply.model.published_adapter_version) == (pb.SERVER_ROLE_TRAINER, "", version)
    assert trainer.metric("tandem_adapter_publishes_total", outcome="written") >= 5


def test_a_sampler_refuses_training_and_names_the_trainer(cluster: tuple[Replica, list[Replica]]) -> None:
    trainer, (sampler, _) = cluster
    calls = {
        "TrainStep": lambda: sampler.stub.TrainStep(TRAIN, timeout=30),
        "SaveAdapter": lambda: sampler.stub.SaveAdapter(pb.SaveAdapterRequest(name="x"), timeout=30),
        "LoadAdapter": lambda: sampler.stub.LoadAdapter(pb.LoadAdapterRequest(name="x"), timeout=30),
    }
    for rpc, call in calls.items():
        with pytest.raises(grpc.RpcError) as error:
            call()
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION, rpc
        assert trainer.process.address in error.value.details(), rpc


def test_min_adapter_version_waits_for_a_later_publish_or_fails_within_the_deadline(cluster: tuple[Replica, list[Replica]]) -> None:
    trainer, (first, second) = cluster
    served = first.version()
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(greedy, first, 30, min_adapter_version=served + 1)
        time.sleep(0.5)
        assert not waiting.done(), "nothing newer was published yet"
        trainer.stub.TrainStep(TRAIN, timeout=60)
        assert waiting.result(timeout=30).adapter_version == served + 1
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as error:
        greedy(second, timeout=1.5, min_adapter_version=served + 100)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"serves adapter version {served + 1}" in error.value.details()
    assert time.monotonic() - started < 1.5


def test_a_sampler_started_late_serves_the_newest_version_when_it_turns_serving(
    cluster: tuple[Replica, list[Replica]], tiny_cache: Path, server_logs: Path, store: Path
) -> None:
    trainer, _ = cluster
    trainer.stub.TrainStep(TRAIN, timeout=60)
    newest = trainer.version()
    late = Replica.connect(start_sampler(tiny_cache, server_logs, store, trainer.process, wait_ready=False))
    try:
        watch = health_pb2_grpc.HealthStub(late.channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=120)
        for update in watch:
            if update.status == health_pb2.HealthCheckResponse.SERVING:
                assert late.version() == newest  # asked the moment readiness turned on
                break
        watch.cancel()
        assert greedy(late).token_ids == greedy(trainer).token_ids
    finally:
        late.close()


def test_a_publish_killed_halfway_is_never_loaded_and_the_previous_version_keeps_serving(
    cluster: tuple[Replica, list[Replica]], store: Path
) -> None:
    trainer, samplers = cluster
    chance = random.Random(20261203)
    reader = AdapterStore(store)
    landed_mid_publish, seen = 0, set()
    for _ in range(KILL_ROUNDS):
        helper = subprocess.Popen([sys.executable, "-m", "tests.support.publish_loop", str(store)], cwd=REPO, stdout=subprocess.PIPE, text=True)
        ready, start = helper.stdout.readline().split()
        assert ready == "ready"
        time.sleep(chance.uniform(0.05, 0.4))
        helper.send_signal(signal.SIGKILL)
        helper.wait(30)
        returned = max((int(line.split()[1]) for line in helper.stdout.read().splitlines() if line.startswith("published ")), default=int(start))
        leftovers = {p.name for p in store.iterdir() if p.name.startswith(".")} - seen  # staging files of the killed publish
        seen |= leftovers
        manifest = reader.manifest()
        # Killed inside publish(): staging files, a whole entry no manifest names yet, or a manifest renamed before publish() returned.
        landed_mid_publish += bool(leftovers) or manifest.entry != reader.entries()[-1] or manifest.adapter_version > returned
        # What the manifest names is whole, and it is what both samplers serve.
        assert reader.read(manifest).metadata.adapter_version == manifest.adapter_version
        deadline = time.monotonic() + FOLLOW_SECONDS
        for sampler in samplers:
            wait_for_version(sampler, manifest.adapter_version, deadline)
            assert greedy(sampler).adapter_version == manifest.adapter_version
        assert manifest.adapter_version >= returned  # every publish that returned stays visible
    assert landed_mid_publish, "some kill fell inside a publish (else this test proved nothing)"
    # The trainer's next step takes the store back (its version is lower than the helper's: samplers follow the newest publish).
    version = trainer.stub.TrainStep(TRAIN, timeout=60).adapter_version
    deadline = time.monotonic() + FOLLOW_SECONDS
    for sampler in samplers:
        wait_for_version(sampler, version, deadline)
        assert greedy(sampler).token_ids == greedy(trainer).token_ids
