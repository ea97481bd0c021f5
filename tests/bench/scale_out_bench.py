"""Scale-out benchmark: publish -> serve lag, and Generate throughput with 1 vs 2 samplers.

    python tests/bench/scale_out_bench.py [--steps 30] [--streams 8] [--seconds 10] [--rounds 3]

Starts a trainer and two samplers (``python -m service`` on loopback, one
adapter store in a temporary directory, one torch thread each, the built-in
tiny model). Lag: after each of ``--steps`` TrainSteps, both samplers are
polled (GetModel, every 5 ms) until they serve the new version; publish ->
serve is the time they did minus the publish time the manifest records (one
machine, one clock), and step -> serve is from the TrainStep's reply. Throughput:
``--streams`` concurrent Generate streams for ``--seconds`` against one sampler
(the baseline), then spread round-robin over both, alternating for ``--rounds``
rounds so that load from other processes falls on both alike; the medians are
compared. Prints a table and writes tests/bench/results/<date>-scale-out-cpu.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tandem.v1 import tandem_pb2 as pb  # noqa: E402
from tandem.v1 import tandem_pb2_grpc  # noqa: E402

from service.runtime.adapter_store import AdapterStore  # noqa: E402
from tests.support.server import ServerProcess, start_server  # noqa: E402

PROMPT_IDS = [1, *range(300, 331)]  # 32 prompt tokens
TRAIN = pb.TrainStepRequest(sequences=[pb.TrainSequence(prompt="The people", completion=" say hello")], optimizer=pb.OptimizerConfig(learning_rate=1e-3))
SERVER_FLAGS = ("--torch-threads", "1")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def measure_lag(trainer, samplers: list, store: AdapterStore, steps: int) -> dict[str, float]:
    """Per step and sampler: seconds from publish (manifest) and from the TrainStep reply until the sampler serves the version."""
    from_publish, from_step = [], []
    for _ in range(steps):
        version = trainer.TrainStep(TRAIN, timeout=60).adapter_version
        replied = time.time()
        for sampler in samplers:
            while sampler.GetModel(pb.GetModelRequest(), timeout=30).model.adapter_version != version:
                time.sleep(0.005)
            served = time.time()
            manifest = store.manifest()
            if manifest.adapter_version == version:
                from_publish.append(served - manifest.published_unix_seconds)
            from_step.append(served - replied)
    return {
        "publish_to_serve_p50_s": percentile(from_publish, 50),
        "publish_to_serve_p99_s": percentile(from_publish, 99),
        "publish_to_serve_max_s": max(from_publish),
        "step_reply_to_serve_p50_s": percentile(from_step, 50),
        "step_reply_to_serve_p99_s": percentile(from_step, 99),
        "lag_samples": len(from_publish),
    }


def generate_tokens_per_second(targets: list, streams: int, seconds: float, max_tokens: int) -> float:
    """Tokens per second of ``streams`` closed-loop Generate streams spread round-robin over ``targets`` for ``seconds``."""
    request = pb.GenerateRequest(
        prompts=[pb.Prompt(token_ids=pb.TokenIds(ids=PROMPT_IDS))], sampling=pb.SamplingParams(n=2, max_tokens=max_tokens, ignore_eos=True)
    )
    stop = threading.Event()

    def stream(index: int) -> int:
        tokens = 0
        calls = 0
        while not stop.is_set():
            target = targets[(index + calls) % len(targets)]
            tokens += sum(len(c.token_ids) for c in target.Generate(request, timeout=600))
            calls += 1
        return tokens

    with ThreadPoolExecutor(streams) as pool:
        started = time.perf_counter()
        futures = [pool.submit(stream, i) for i in range(streams)]
        time.sleep(seconds)
        stop.set()
        tokens = sum(f.result() for f in futures)
    return tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        store_dir = work / "store"
        trainer = start_server(work / "cache", work / "logs", "--role", "trainer", "--adapter-store", str(store_dir), *SERVER_FLAGS, wait_ready=False)
        sampler_flags = ("--role", "sampler", "--adapter-store", str(store_dir), "--trainer-address", trainer.address, *SERVER_FLAGS)
        processes: list[ServerProcess] = [trainer] + [start_server(work / "cache", work / "logs", *sampler_flags, wait_ready=False) for _ in range(2)]
        channels = [grpc.insecure_channel(p.address) for p in processes]
        try:
            for process in processes:
                process.wait_ready()
            trainer_stub, *sampler_stubs = [tandem_pb2_grpc.TandemServiceStub(c) for c in channels]
            results = measure_lag(trainer_stub, sampler_stubs, AdapterStore(store_dir), args.steps)
            generate_tokens_per_second(sampler_stubs, args.streams, 2.0, args.max_tokens)  # warm-up
            rounds: dict[int, list[float]] = {1: [], 2: []}
            for _ in range(args.rounds):
                for count in rounds:
                    rounds[count].append(generate_tokens_per_second(sampler_stubs[:count], args.streams, args.seconds, args.max_tokens))
            one, two = statistics.median(rounds[1]), statistics.median(rounds[2])
            results |= {
                "generate_tokens_per_s_1_sampler": one,
                "generate_tokens_per_s_2_samplers": two,
                "speedup_2_vs_1": two / one,
                "rounds_tokens_per_s": {f"{count}_sampler{'s' if count > 1 else ''}": values for count, values in rounds.items()},
            }
        finally:
            for channel in channels:
                channel.close()
            for process in processes:
                process.stop()
    load_after = os.getloadavg()[0]
    record = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, shared: load average {load_before:.1f} at the start, {load_after:.1f} at the end",
        "settings": {
            "model": "tandem/tiny",
            "servers": "1 trainer + 2 samplers, 1 torch thread each, one adapter store",
            "steps": args.steps,
            "streams": args.streams,
            "seconds_per_round": args.seconds,
            "rounds": args.rounds,
            "generate": {"prompt_tokens": len(PROMPT_IDS), "n": 2, "max_tokens": args.max_tokens},
        },
        "results": results,
    }
    for key, value in results.items():
        print(f"{key:32} {value:10.3f}" if isinstance(value, float) else f"{key:32} {value}")
    out = REPO / "tests" / "bench" / "results" / f"{record['date']}-scale-out-cpu.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
