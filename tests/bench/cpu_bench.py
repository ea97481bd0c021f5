"""CPU benchmark of the core service on the built-in tiny model.

    python tests/bench/cpu_bench.py [--streams 16] [--max-tokens 64]

Starts the real server on loopback and measures through gRPC: LoadModel
seconds, Generate tokens/s with 1 and N concurrent streams, TrainStep tokens/s.
Baselines in the same run: transformers ``generate`` and a plain PEFT training
loop on the same 4-bit model in this process. Prints a table and writes
tests/bench/results/<date>-cpu.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tandem.v1 import tandem_pb2 as pb  # noqa: E402
from tandem.v1 import tandem_pb2_grpc  # noqa: E402

from tests.support.server import start_server  # noqa: E402

PROMPT_IDS = [1, *range(300, 331)]  # 32 prompt tokens
TRAIN_BATCH, TRAIN_LEN = 8, 128


def generate_tokens_per_second(stub, streams: int, max_tokens: int) -> float:
    request = pb.GenerateRequest(
        prompts=[pb.Prompt(token_ids=pb.TokenIds(ids=PROMPT_IDS))],
        sampling=pb.SamplingParams(max_tokens=max_tokens, ignore_eos=True, seed=1),
    )

    def one_stream(_: int) -> int:
        return sum(len(c.token_ids) for c in stub.Generate(request, timeout=600))

    started = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        tokens = sum(pool.map(one_stream, range(streams)))
    return tokens / (time.perf_counter() - started)


def train_request() -> pb.TrainStepRequest:
    sequences = [pb.TrainSequence(token_ids=[1 + (i * 7 + t) % 900 for t in range(TRAIN_LEN)]) for i in range(TRAIN_BATCH)]
    return pb.TrainStepRequest(sequences=sequences, optimizer=pb.OptimizerConfig(learning_rate=1e-5))


def train_tokens_per_second(stub, steps: int) -> float:
    stub.TrainStep(train_request(), timeout=600)  # warm-up
    started = time.perf_counter()
    tokens = sum(stub.TrainStep(train_request(), timeout=600).tokens for _ in range(steps))
    return tokens / (time.perf_counter() - started)


def in_process_baselines(cache: Path, streams: int, max_tokens: int, steps: int) -> dict[str, float]:
    """transformers generate and a plain PEFT loop on the same 4-bit model, without the service."""
    from service.runtime.peft_model import attach_lora, load_hf_base
    from service.runtime.specs import LoadSpec
    from service.tiny_model import ensure_builtin_model

    spec = LoadSpec()
    model = attach_lora(load_hf_base(ensure_builtin_model("tandem/tiny", cache), spec, torch.float32, torch.device("cpu")), spec)
    prompts = torch.tensor([PROMPT_IDS] * streams)
    with torch.inference_mode():
        started = time.perf_counter()
        out = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=True, max_new_tokens=max_tokens, min_new_tokens=max_tokens)
        generate_rate = (out.shape[1] - prompts.shape[1]) * streams / (time.perf_counter() - started)
    batch = torch.tensor([[1 + (i * 7 + t) % 900 for t in range(TRAIN_LEN)] for i in range(TRAIN_BATCH)])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()
    started = None
    for step in range(steps + 1):
        if step == 1:
            started = time.perf_counter()
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    train_rate = TRAIN_BATCH * (TRAIN_LEN - 1) * steps / (time.perf_counter() - started)
    return {"baseline_hf_generate_tokens_per_s": generate_rate, "baseline_peft_train_tokens_per_s": train_rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tandem-bench-"))
    server = start_server(work / "cache", work / "logs", "--model", "none", wait_ready=False)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = tandem_pb2_grpc.TandemServiceStub(channel)
            list(stub.LoadModel(pb.LoadModelRequest(), timeout=600))  # makes the built-in model once
            started = time.perf_counter()
            list(stub.LoadModel(pb.LoadModelRequest(), timeout=600))
            results = {"load_model_seconds": time.perf_counter() - started}
            results["generate_tokens_per_s_1_stream"] = generate_tokens_per_second(stub, 1, args.max_tokens)
            results[f"generate_tokens_per_s_{args.streams}_streams"] = generate_tokens_per_second(stub, args.streams, args.max_tokens)
            results["train_tokens_per_s"] = train_tokens_per_second(stub, args.train_steps)
    finally:
        server.stop()
    results |= in_process_baselines(work / "cache", args.streams, args.max_tokens, args.train_steps)
    results["generate_vs_hf_generate"] = results[f"generate_tokens_per_s_{args.streams}_streams"] / results["baseline_hf_generate_tokens_per_s"]
    results["train_vs_peft"] = results["train_tokens_per_s"] / results["baseline_peft_train_tokens_per_s"]
    record = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "settings": {"model": "tandem/tiny", "prompt_tokens": len(PROMPT_IDS), "max_tokens": args.max_tokens, "train_batch": [TRAIN_BATCH, TRAIN_LEN]},
        "results": results,
    }
    print(f"{'metric':<40} {'value':>12}")
    for key, value in results.items():
        print(f"{key:<40} {value:>12.2f}")
    out = REPO / "tests" / "bench" / "results" / f"{record['date']}-cpu.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
