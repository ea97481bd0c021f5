"""GPU benchmark of the vLLM engine: the service through gRPC against its baselines, in one run.

    python tests/bench/gpu_bench.py [--cache-dir DIR] [--out tests/bench/results]

On the 1.1B-shaped built-in model in 4 bits with a rank-64 LoRA it measures:

1. a fresh server (``python -m service --model none``) with an empty vLLM
   compile cache: LoadModel seconds (cold) and GPU memory right after it;
   TRAIN_STEPS TrainSteps of 8 x 512 tokens (tokens/s, LoRA sync seconds);
   Generate tokens/s for 256 prompts x 128 tokens in, 256 out, as 256
   concurrent RPCs and as one RPC of 256 prompts;
2. a second server on the same compile cache: LoadModel seconds (warm);
3. gpu_baselines.py in its own process: vLLM alone with the same engine
   settings (memory, ``LLM.generate`` tokens/s), the base loaded a second
   time through transformers, transformers ``generate`` and a plain PEFT loop;
4. gpu_runtime_profile.py in its own process: the same Generate batch on the
   runtime without gRPC, with the device thread's time inside vLLM's step.

Prints a table, writes tests/bench/results/<date>-gpu-<gpu>.json (GPU, versions,
settings, figures, targets) and a PNG plot beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.metadata
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tandem.v1 import tandem_pb2 as pb  # noqa: E402
from tandem.v1 import tandem_pb2_grpc  # noqa: E402

from tests.bench.gpu_workload import (  # noqa: E402
    LEARNING_RATE,
    LORA_ALPHA,
    LORA_RANK,
    MODEL,
    NEW_TOKENS,
    PROMPT_TOKENS,
    PROMPTS,
    TRAIN_STEPS,
    gpu_name,
    gpu_used_bytes,
    prompt_ids,
    train_batch,
)
from tests.support.server import ServerProcess, start_server  # noqa: E402

GIB = 2**30
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 2**20), ("grpc.max_send_message_length", 64 * 2**20)]
TARGETS = {
    "generate_vs_vllm": (">=", 0.95),
    "generate_vs_transformers": (">=", 15.0),
    "lora_sync_ms_p50": ("<=", 10.0),
    "train_vs_peft": (">=", 1.0),
}


def load_model(server: ServerProcess) -> tuple[float, pb.ModelInfo]:
    """LoadModel with the benchmark's settings; (wall seconds, model info)."""
    request = pb.LoadModelRequest(
        model_name=MODEL, fast_inference=True, gpu_memory_utilization=0.5, max_lora_rank=64, lora=pb.LoraConfig(rank=LORA_RANK, alpha=LORA_ALPHA)
    )
    with grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
        started = time.perf_counter()
        events = list(tandem_pb2_grpc.TandemServiceStub(channel).LoadModel(request, timeout=900))
        seconds = time.perf_counter() - started
    return seconds, events[-1].model


def get_model(stub) -> pb.ModelInfo:
    return stub.GetModel(pb.GetModelRequest(), timeout=30).model


def train_steps(stub) -> dict:
    """TRAIN_STEPS TrainSteps on the benchmark batch; the first is a warm-up for tokens/s."""
    request = pb.TrainStepRequest(
        sequences=[pb.TrainSequence(token_ids=ids) for ids in train_batch()], optimizer=pb.OptimizerConfig(learning_rate=LEARNING_RATE)
    )
    walls, phases, tokens = [], [], 0
    for _ in range(TRAIN_STEPS):
        started = time.perf_counter()
        reply = stub.TrainStep(request, timeout=600)
        walls.append(time.perf_counter() - started)
        phases.append({f.name: getattr(reply.seconds, f.name) for f in reply.seconds.DESCRIPTOR.fields})
        tokens = reply.tokens
    timed = walls[1:]
    return {
        "tokens_per_step": tokens,
        "step_seconds": walls,
        "sync_seconds": [p["sync"] for p in phases],
        "mean_phase_seconds": {name: statistics.mean(p[name] for p in phases[1:]) for name in phases[0]},
        "tokens_per_second": tokens * len(timed) / sum(timed),
    }


async def generate_concurrently(address: str, prompts: list[list[int]], one_call: bool) -> tuple[int, float]:
    """Generate every prompt (NEW_TOKENS each, no early stop): as one RPC per prompt, or one RPC for all; (tokens, seconds)."""
    sampling = pb.SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True, temperature=1.0)
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = tandem_pb2_grpc.TandemServiceStub(channel)

        async def call(batch: list[list[int]]) -> int:
            request = pb.GenerateRequest(prompts=[pb.Prompt(token_ids=pb.TokenIds(ids=ids)) for ids in batch], sampling=sampling)
            return sum([len(reply.token_ids) async for reply in stub.Generate(request, timeout=600)])

        started = time.perf_counter()
        counts = await asyncio.gather(call(prompts)) if one_call else await asyncio.gather(*(call([ids]) for ids in prompts))
        return sum(counts), time.perf_counter() - started


def generate_tokens_per_second(server: ServerProcess) -> dict:
    prompts = prompt_ids(PROMPTS, PROMPT_TOKENS)
    asyncio.run(generate_concurrently(server.address, prompts[:16], one_call=True))  # warm-up
    result = {}
    for label, one_call in (("concurrent_rpcs", False), ("one_rpc", True)):
        tokens, seconds = asyncio.run(generate_concurrently(server.address, prompts, one_call))
        assert tokens == PROMPTS * NEW_TOKENS, f"{label}: {tokens} tokens"
        result[label] = tokens / seconds
    return result


def run_service(cache_dir: Path, logs: Path, cold: bool) -> dict:
    """One server's life: LoadModel, and on the cold run everything measured through gRPC."""
    server = start_server(cache_dir, logs, "--model", "none", wait_ready=False)
    try:
        seconds, info = load_model(server)
        result = {"load_seconds": seconds, "load_seconds_server": info.load_seconds, "used_after_load_bytes": gpu_used_bytes()}
        if not cold:
            return result
        with grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
            stub = tandem_pb2_grpc.TandemServiceStub(channel)
            result["memory_after_load"] = _memory(get_model(stub))
            result["train"] = train_steps(stub)
            result["memory_after_train"] = _memory(get_model(stub))
            result["used_after_train_bytes"] = gpu_used_bytes()
        result["generate_tokens_per_second"] = generate_tokens_per_second(server)
        return result
    finally:
        server.stop()


def _memory(info: pb.ModelInfo) -> dict:
    m = info.memory
    return {f.name: getattr(m, f.name) for f in m.DESCRIPTOR.fields}


def run_phase(script: str, cache_dir: Path, logs: Path) -> dict:
    """Run tests/bench/<script>.py in a process of its own; its JSON result."""
    out = logs / f"{script}.json"
    with (logs / f"{script}.log").open("w") as log:
        command = [sys.executable, str(REPO / f"tests/bench/{script}.py"), "--cache-dir", str(cache_dir), "--json", str(out)]
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    return json.loads(out.read_text())


def summarize(service: dict, warm: dict, baselines: dict, profile: dict) -> dict:
    train = service["train"]
    syncs_ms = sorted(s * 1000 for s in train["sync_seconds"])
    generate = service["generate_tokens_per_second"]["concurrent_rpcs"]
    after_train = service["memory_after_train"]
    return {
        "service_generate_tokens_per_second": generate,
        "service_generate_one_rpc_tokens_per_second": service["generate_tokens_per_second"]["one_rpc"],
        "runtime_generate_tokens_per_second": max(run["tokens_per_second"] for run in profile.values()),
        "vllm_generate_tokens_per_second": baselines["vllm_generate_tokens_per_second"],
        "transformers_generate_tokens_per_second": baselines["transformers_generate_tokens_per_second"],
        "generate_vs_vllm": generate / baselines["vllm_generate_tokens_per_second"],
        "generate_vs_transformers": generate / baselines["transformers_generate_tokens_per_second"],
        "lora_sync_ms_p50": statistics.median(syncs_ms),
        "lora_sync_ms_p99": syncs_ms[min(len(syncs_ms) - 1, round(0.99 * (len(syncs_ms) - 1)))],
        "extra_gib_vs_vllm_alone": (service["used_after_load_bytes"] - baselines["vllm_alone_used_bytes"]) / GIB,
        "extra_gib_base_loaded_twice": (baselines["base_twice_used_bytes"] - baselines["vllm_alone_used_bytes"]) / GIB,
        "adapter_and_optimizer_gib": (after_train["adapter_bytes"] + after_train["optimizer_bytes"]) / GIB,
        "service_train_tokens_per_second": train["tokens_per_second"],
        "peft_train_tokens_per_second": baselines["peft_train_tokens_per_second"],
        "train_vs_peft": train["tokens_per_second"] / baselines["peft_train_tokens_per_second"],
        "load_seconds_cold": service["load_seconds"],
        "load_seconds_warm": warm["load_seconds"],
    }


def verdicts(figures: dict) -> dict:
    """Each target: the figure, the bound and whether it is met."""
    result = {key: {"figure": figures[key], "target": f"{op} {bound}", "met": figures[key] >= bound if op == ">=" else figures[key] <= bound} for key, (op, bound) in TARGETS.items()}
    memory_bound = figures["adapter_and_optimizer_gib"] + 0.25
    result["extra_gib_vs_vllm_alone"] = {
        "figure": figures["extra_gib_vs_vllm_alone"],
        "target": f"<= adapter_and_optimizer_gib + 0.25 = {memory_bound:.3f}",
        "met": figures["extra_gib_vs_vllm_alone"] <= memory_bound,
    }
    return result


def versions() -> dict:
    names = ("torch", "vllm", "transformers", "peft", "bitsandbytes", "grpcio", "triton")
    return {name: importlib.metadata.version(name) for name in names}


def print_table(figures: dict, targets: dict) -> None:
    print(f"\n{'figure':42} {'value':>14}  target")
    for key, value in figures.items():
        verdict = targets.get(key)
        note = f"{verdict['target']}  {'met' if verdict['met'] else 'MISSED'}" if verdict else ""
        print(f"{key:42} {value:>14,.3f}  {note}")


def plot(figures: dict, path: Path, title: str) -> None:
    """Two panels: generation throughput by engine path, and GPU memory beyond vLLM alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = ["Tandem Generate\n(gRPC)", "vLLM LLM.generate\n(in-process)", "transformers\ngenerate"]
    rates = [figures["service_generate_tokens_per_second"], figures["vllm_generate_tokens_per_second"], figures["transformers_generate_tokens_per_second"]]
    left.bar(names, rates, color=["#2a7", "#47c", "#999"])
    left.set_yscale("log")
    left.set_ylabel("generated tokens / s (log)")
    left.set_title(f"{PROMPTS} prompts x {PROMPT_TOKENS} in / {NEW_TOKENS} out, LoRA r{LORA_RANK}")
    for i, rate in enumerate(rates):
        left.text(i, rate, f"{rate:,.0f}", ha="center", va="bottom")
    extras = [figures["extra_gib_vs_vllm_alone"], figures["adapter_and_optimizer_gib"] + 0.25, figures["extra_gib_base_loaded_twice"]]
    right.bar(["Tandem\n(one base)", "target\n(adapter+optim+0.25)", "base loaded\ntwice"], extras, color=["#2a7", "#ccc", "#c54"])
    right.set_ylabel("GiB beyond vLLM alone")
    right.set_title("GPU memory after LoadModel")
    for i, gib in enumerate(extras):
        right.text(i, gib, f"{gib:.2f}", ha="center", va="bottom")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the 1.1B model is made (default: a temporary directory)")
    parser.add_argument("--out", type=Path, default=REPO / "tests/bench/results")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tandem-gpu-bench-"))
    cache_dir = args.cache_dir or work / "cache"
    os.environ["VLLM_CACHE_ROOT"] = str(work / "vllm-cache")  # empty: the first load compiles from scratch
    from service.tiny_model import ensure_builtin_model

    ensure_builtin_model(MODEL, cache_dir)
    print("service, cold compile cache ...", flush=True)
    service = run_service(cache_dir, work, cold=True)
    print("service, warm compile cache ...", flush=True)
    warm = run_service(cache_dir, work, cold=False)
    print("baselines ...", flush=True)
    baselines = run_phase("gpu_baselines", cache_dir, work)
    print("runtime profile ...", flush=True)
    profile = run_phase("gpu_runtime_profile", cache_dir, work)
    figures = summarize(service, warm, baselines, profile)
    targets = verdicts(figures)
    gpu = gpu_name()
    date = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    stem = f"{date}-gpu-{re.sub(r'[^a-z0-9]+', '-', gpu.lower()).strip('-')}"
    record = {
        "date": date,
        "gpu": gpu,
        "command": "python tests/bench/gpu_bench.py",
        "versions": versions(),
        "settings": {
            "model": MODEL,
            "load_in_4bit": True,
            "lora_rank": LORA_RANK,
            "gpu_memory_utilization": 0.5,
            "prompts": PROMPTS,
            "prompt_tokens": PROMPT_TOKENS,
            "new_tokens": NEW_TOKENS,
            "train_batch": "8 x 512 token ids",
            "train_steps": TRAIN_STEPS,
        },
        "results": figures,
        "targets": targets,
        "details": {"service": service, "warm": warm, "baselines": baselines, "runtime_profile": profile},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    plot(figures, args.out / f"{stem}.png", f"Tandem vLLM engine, {MODEL}, {gpu}")
    print_table(figures, targets)
    print(f"\nwrote {args.out / stem}.json and .png; logs in {work}")


if __name__ == "__main__":
    main()
