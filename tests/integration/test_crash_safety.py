"""Adapter checkpoints survive SIGKILL at any point of a save, and their names stay inside the checkpoint root.

The kill points are random (seeded, so a failure reproduces) over twice the
time a save takes; after every kill the server restarts on the same root and
everything it lists must load, and an overwrite cut short keeps the old or
the new checkpoint, never neither. (On the development machine a save takes
about 17 ms and 3 of 4 kills left a .tmp- or .old- directory behind for the
restart to clear: the kills do land mid-write.)
"""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

import grpc
import pytest
from tandem.v1 import tandem_pb2 as pb
from tandem.v1 import tandem_pb2_grpc

from tests.support.server import ServerProcess, start_server

ROUNDS = 4
CHECKPOINT_FILES = {"adapter_model.safetensors", "adapter_config.json", "training_state.pt", "tandem.json"}
TRAIN = pb.TrainStepRequest(sequences=[pb.TrainSequence(prompt="The people", completion=" say hello")], optimizer=pb.OptimizerConfig(learning_rate=1e-3))


def _start(tiny_cache: Path, server_logs: Path, root: Path) -> tuple[ServerProcess, grpc.Channel, tandem_pb2_grpc.TandemServiceStub]:
    server = start_server(tiny_cache, server_logs, "--checkpoint-root", str(root))
    channel = grpc.insecure_channel(server.address)
    return server, channel, tandem_pb2_grpc.TandemServiceStub(channel)


def _assert_every_visible_checkpoint_is_whole(stub: tandem_pb2_grpc.TandemServiceStub, root: Path) -> set[str]:
    listed = {c.name for c in stub.ListAdapters(pb.ListAdaptersRequest(), timeout=30).checkpoints}
    visible = {entry.name for entry in root.iterdir() if not entry.name.startswith(".")}
    assert visible == listed, "a directory under the root is not a listed checkpoint"
    for name in listed:
        assert {f.name for f in (root / name).iterdir()} >= CHECKPOINT_FILES
        assert stub.LoadAdapter(pb.LoadAdapterRequest(name=name), timeout=60).checkpoint.name == name
    return listed


def test_sigkill_during_save_adapter_never_leaves_a_half_written_checkpoint(tiny_cache: Path, server_logs: Path, tmp_path: Path) -> None:
    root = tmp_path / "adapters"
    chance = random.Random(20261126)
    server, channel, stub = _start(tiny_cache, server_logs, root)
    stub.TrainStep(TRAIN, timeout=60)
    started = time.perf_counter()
    stub.SaveAdapter(pb.SaveAdapterRequest(name="stable"), timeout=60)
    save_seconds = time.perf_counter() - started
    try:
        for round_ in range(ROUNDS):
            stub.TrainStep(TRAIN, timeout=60)
            saves = [
                stub.SaveAdapter.future(pb.SaveAdapterRequest(name="stable", overwrite=True), timeout=60),
                stub.SaveAdapter.future(pb.SaveAdapterRequest(name=f"round-{round_}"), timeout=60),
            ]
            time.sleep(chance.uniform(0, 2 * save_seconds))
            server.process.kill()
            server.process.wait(30)
            for save in saves:
                save.cancel()
            channel.close()
            server, channel, stub = _start(tiny_cache, server_logs, root)
            listed = _assert_every_visible_checkpoint_is_whole(stub, root)
            assert "stable" in listed
    finally:
        channel.close()
        server.stop()


@pytest.fixture
def escaping_root(tmp_path: Path) -> tuple[Path, Path]:
    """A checkpoint root holding a symlink 'escape' to a directory outside it."""
    root, outside = tmp_path / "adapters", tmp_path / "outside"
    root.mkdir()
    (outside / "keep").mkdir(parents=True)
    (root / "escape").symlink_to(outside)
    return root, outside


def test_checkpoint_names_cannot_follow_a_symlink_out_of_the_root(tiny_cache: Path, server_logs: Path, escaping_root: tuple[Path, Path]) -> None:
    root, outside = escaping_root
    server, channel, stub = _start(tiny_cache, server_logs, root)
    try:
        calls = {
            "SaveAdapter": lambda: stub.SaveAdapter(pb.SaveAdapterRequest(name="escape", overwrite=True), timeout=60),
            "LoadAdapter": lambda: stub.LoadAdapter(pb.LoadAdapterRequest(name="escape"), timeout=60),
            "DeleteAdapter": lambda: stub.DeleteAdapter(pb.DeleteAdapterRequest(name="escape"), timeout=60),
            "Generate": lambda: list(stub.Generate(pb.GenerateRequest(prompts=[pb.Prompt(text="a")], adapter="escape"), timeout=60)),
        }
        for rpc, call in calls.items():
            with pytest.raises(grpc.RpcError) as error:
                call()
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, rpc
            assert "symlink" in error.value.details() and str(outside) not in error.value.details()
        assert sorted(p.name for p in outside.iterdir()) == ["keep"]  # nothing written, moved or deleted outside
        assert (root / "escape").is_symlink()
        # A real checkpoint moved outside and linked back in is not listed either (LoadAdapter would refuse it).
        stub.SaveAdapter(pb.SaveAdapterRequest(name="real"), timeout=60)
        (root / "real").rename(outside / "real")
        (root / "linked").symlink_to(outside / "real")
        assert [c.name for c in stub.ListAdapters(pb.ListAdaptersRequest(), timeout=30).checkpoints] == []
    finally:
        channel.close()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
