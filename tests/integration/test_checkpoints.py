"""Adapter checkpoints through the real server: save, list, load, delete, exact resume across a
restart, and sampling / scoring with the trained adapter, a saved one, or the base."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
import torch
from peft import PeftModel
from tandem.v1 import tandem_pb2 as pb
from tandem.v1 import tandem_pb2_grpc

from service.runtime.peft_model import load_hf_base
from service.runtime.specs import LoadSpec
from service.tiny_model import ensure_builtin_model
from tests.support.server import start_server

PROMPT = [1, 40, 41, 42]
FIRST = [300, 301, 302, 303, 2]
SECOND = [500, 501, 502, 503, 2]
GREEDY = pb.SamplingParams(temperature=0.0, max_tokens=8, logprobs=0)


@pytest.fixture(scope="module")
def checkpoint_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="module")
def server_flags(checkpoint_root: Path) -> tuple[str, ...]:
    """This module's server keeps its checkpoints in ``checkpoint_root``."""
    return ("--checkpoint-root", str(checkpoint_root))


def train(stub, completion: list[int], steps: int, lr: float = 1e-2) -> pb.TrainStepResponse:
    """``steps`` SFT steps towards answering PROMPT with ``completion``."""
    sequence = pb.TrainSequence(token_ids=PROMPT + completion, loss_weights=[0.0] * len(PROMPT) + [1.0] * len(completion))
    request = pb.TrainStepRequest(sequences=[sequence], optimizer=pb.OptimizerConfig(learning_rate=lr))
    for _ in range(steps):
        reply = stub.TrainStep(request, timeout=60)
    return reply


def teach(stub, completion: list[int]) -> None:
    """Train until the trained adapter answers PROMPT with ``completion`` greedily."""
    for _ in range(15):
        train(stub, completion, steps=10)
        if greedy(stub)[0] == completion:
            return
    raise AssertionError(f"the adapter did not learn {completion}")


def greedy(stub, adapter: str = "") -> tuple[list[int], list[float], set[int]]:
    """Greedy completion of PROMPT: tokens, their logprobs, adapter versions reported."""
    request = pb.GenerateRequest(prompts=[pb.Prompt(token_ids=pb.TokenIds(ids=PROMPT))], sampling=GREEDY, adapter=adapter)
    tokens, logprobs, versions = [], [], set()
    for chunk in stub.Generate(request, timeout=60):
        tokens += chunk.token_ids
        logprobs += [lp.logprob for lp in chunk.logprobs]
        versions.add(chunk.adapter_version)
    return tokens, logprobs, versions


def logprobs(stub, ids: list[int], adapter: str = "") -> tuple[list[float], int]:
    reply = stub.ComputeLogprobs(pb.ComputeLogprobsRequest(sequences=[pb.TokenIds(ids=ids)], adapter=adapter), timeout=60)
    return list(reply.sequences[0].logprobs), reply.adapter_version


def model_info(stub) -> pb.ModelInfo:
    return stub.GetModel(pb.GetModelRequest(), timeout=10).model


def save(stub, name: str, overwrite: bool = False) -> pb.AdapterCheckpoint:
    return stub.SaveAdapter(pb.SaveAdapterRequest(name=name, overwrite=overwrite), timeout=60).checkpoint


def listed(stub) -> dict[str, pb.AdapterCheckpoint]:
    return {c.name: c for c in stub.ListAdapters(pb.ListAdaptersRequest(), timeout=10).checkpoints}


def code_of(call) -> grpc.StatusCode:
    """The status code ``call()`` fails with."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


def test_save_list_delete_and_the_files_are_a_peft_adapter(stub, checkpoint_root, tiny_cache):
    train(stub, FIRST, steps=3)
    info = model_info(stub)
    ids = PROMPT + FIRST
    current_before = logprobs(stub, ids)
    saved = save(stub, "peft-format.v1")
    assert (saved.name, saved.step, saved.adapter_version) == ("peft-format.v1", info.step, info.adapter_version)
    assert saved.rank == info.lora.rank and saved.model_name == "tandem/tiny" and saved.size_bytes > 0 and saved.created_unix_seconds > 0
    assert listed(stub)["peft-format.v1"] == saved

    directory = checkpoint_root / "peft-format.v1"
    config = json.loads((directory / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == info.lora.rank and config["inference_mode"] is True
    assert sorted(config["target_modules"]) == sorted(info.lora.target_modules)
    assert not [p.name for p in checkpoint_root.iterdir() if p.name.startswith(".")]  # no temporary directories left

    # PEFT itself loads the directory onto the 4-bit base and scores like the server does.
    base = load_hf_base(ensure_builtin_model("tandem/tiny", tiny_cache), LoadSpec(), torch.float32, torch.device("cpu"))
    peft_model = PeftModel.from_pretrained(base, directory).eval()
    with torch.no_grad():
        peft_logprobs = torch.log_softmax(peft_model(input_ids=torch.tensor([ids])).logits[0, :-1], -1)
    expected = [0.0] + [float(peft_logprobs[i, ids[i + 1]]) for i in range(len(ids) - 1)]
    assert logprobs(stub, ids, "peft-format.v1")[0] == pytest.approx(expected, abs=1e-4)
    # Saving and loading adapters leaves the served model exactly as it was (bitsandbytes' CPU
    # weight repacking once broke this: state_dict() changed every output).
    assert logprobs(stub, ids) == current_before

    stub.DeleteAdapter(pb.DeleteAdapterRequest(name="peft-format.v1"), timeout=60)
    assert "peft-format.v1" not in listed(stub) and not directory.exists()


def test_bad_names_missing_and_existing_checkpoints_have_precise_codes(stub):
    for bad in ("", "base", "../escape", "a/b", ".hidden", "x" * 65, "sp ace"):
        assert code_of(lambda: save(stub, bad)) == grpc.StatusCode.INVALID_ARGUMENT, bad
        assert code_of(lambda: stub.LoadAdapter(pb.LoadAdapterRequest(name=bad), timeout=60)) == grpc.StatusCode.INVALID_ARGUMENT, bad
        assert code_of(lambda: stub.DeleteAdapter(pb.DeleteAdapterRequest(name=bad), timeout=60)) == grpc.StatusCode.INVALID_ARGUMENT, bad
    assert code_of(lambda: stub.LoadAdapter(pb.LoadAdapterRequest(name="missing"), timeout=60)) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: stub.DeleteAdapter(pb.DeleteAdapterRequest(name="missing"), timeout=60)) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: greedy(stub, adapter="missing")) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: logprobs(stub, PROMPT, adapter="missing")) == grpc.StatusCode.NOT_FOUND

    first = save(stub, "twice")
    assert code_of(lambda: save(stub, "twice")) == grpc.StatusCode.ALREADY_EXISTS
    train(stub, FIRST, steps=1)
    replaced = save(stub, "twice", overwrite=True)
    assert replaced.adapter_version == first.adapter_version + 1 and listed(stub)["twice"] == replaced
    stub.DeleteAdapter(pb.DeleteAdapterRequest(name="twice"), timeout=60)


def test_generate_and_logprobs_from_the_trained_a_saved_and_the_base_adapter(stub):
    """The default max_loras=1 holds one saved adapter at a time: switching between two evicts and reloads."""
    early = save(stub, "early", overwrite=True)
    teach(stub, FIRST)
    taught = save(stub, "taught-first", overwrite=True)
    teach(stub, SECOND)
    current_version = model_info(stub).adapter_version

    tokens, sampled_logprobs, versions = greedy(stub, "taught-first")
    assert tokens == FIRST and versions == {taught.adapter_version}
    assert greedy(stub, "")[0] == SECOND and greedy(stub, "")[2] == {current_version}
    base_tokens, _, base_versions = greedy(stub, "base")
    assert base_tokens not in (FIRST, SECOND) and base_versions == {0}
    assert greedy(stub, "early")[2] == {early.adapter_version}
    assert greedy(stub, "taught-first")[0] == FIRST  # evicted by "early" and loaded again

    # ComputeLogprobs scores with the same adapters, and agrees with the sampler's logprobs.
    saved_lp, saved_version = logprobs(stub, PROMPT + FIRST, "taught-first")
    assert saved_version == taught.adapter_version
    assert saved_lp[len(PROMPT):] == pytest.approx(sampled_logprobs, abs=1e-4)
    current_lp, version = logprobs(stub, PROMPT + FIRST, "")
    base_lp, base_version = logprobs(stub, PROMPT + FIRST, "base")
    assert (version, base_version) == (current_version, 0)
    assert sum(saved_lp) > sum(current_lp) + 5 and sum(saved_lp) > sum(base_lp) + 5

    # Saved adapters held by the engine and the scorer do not change which adapter trains.
    reply = train(stub, FIRST, steps=1, lr=1e-2)
    assert reply.outcome == pb.STEP_OUTCOME_APPLIED and reply.adapter_version == current_version + 1
    assert logprobs(stub, PROMPT + FIRST, "")[0] != current_lp
    assert logprobs(stub, PROMPT + FIRST, "taught-first")[0] == saved_lp


def test_overwrite_and_delete_reach_the_engine(stub):
    teach(stub, FIRST)
    save(stub, "moving", overwrite=True)
    assert greedy(stub, "moving")[0] == FIRST
    teach(stub, SECOND)
    replaced = save(stub, "moving", overwrite=True)
    tokens, _, versions = greedy(stub, "moving")
    assert tokens == SECOND and versions == {replaced.adapter_version}
    stub.DeleteAdapter(pb.DeleteAdapterRequest(name="moving"), timeout=60)
    assert code_of(lambda: greedy(stub, "moving")) == grpc.StatusCode.NOT_FOUND


def batch(seed: int) -> pb.TrainStepRequest:
    """A distinct SFT batch per seed: two sequences of 'random' token ids."""
    generator = torch.Generator().manual_seed(seed)
    sequences = [pb.TrainSequence(token_ids=torch.randint(3, 1000, (12,), generator=generator).tolist()) for _ in range(2)]
    return pb.TrainStepRequest(sequences=sequences, optimizer=pb.OptimizerConfig(learning_rate=2e-2))


def test_a_run_resumed_after_a_restart_computes_the_same_losses(tiny_cache, server_logs, tmp_path):
    """Save mid-run (with a micro-batch accumulated), restart the server, load, continue: same losses as without the restart."""
    root = tmp_path / "checkpoints"
    probe = PROMPT + FIRST

    first = start_server(tiny_cache, server_logs, "--checkpoint-root", str(root))
    try:
        with grpc.insecure_channel(first.address) as channel:
            stub = tandem_pb2_grpc.TandemServiceStub(channel)
            for seed in (1, 2):
                stub.TrainStep(batch(seed), timeout=60)
            accumulate = batch(3)
            accumulate.accumulate = True
            stub.TrainStep(accumulate, timeout=60)
            saved = save(stub, "mid-run")
            probe_at_save = logprobs(stub, probe)[0]
            uninterrupted = [stub.TrainStep(batch(seed), timeout=60) for seed in (4, 5, 6)]
    finally:
        first.stop()

    second = start_server(tiny_cache, server_logs, "--checkpoint-root", str(root))
    try:
        with grpc.insecure_channel(second.address) as channel:
            stub = tandem_pb2_grpc.TandemServiceStub(channel)
            assert logprobs(stub, probe)[0] != probe_at_save  # a fresh adapter: the load below is what matters
            restored = stub.LoadAdapter(pb.LoadAdapterRequest(name="mid-run"), timeout=60)
            assert restored.checkpoint == saved and restored.step == 2
            assert restored.adapter_version == saved.adapter_version + 1  # loads count as changes
            info = model_info(stub)
            assert (info.step, info.adapter_version, info.accumulated_micro_batches) == (2, restored.adapter_version, 1)
            assert logprobs(stub, probe)[0] == probe_at_save
            resumed = [stub.TrainStep(batch(seed), timeout=60) for seed in (4, 5, 6)]
    finally:
        second.stop()

    assert [r.loss for r in resumed] == [r.loss for r in uninterrupted]
    assert [r.grad_norm for r in resumed] == [r.grad_norm for r in uninterrupted]
    assert [r.step for r in resumed] == [r.step for r in uninterrupted] == [3, 4, 5]

