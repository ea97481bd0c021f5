"""Soak: many concurrent Generate streams plus TrainSteps against one server, for a bounded time.

    python tests/bench/soak.py [--duration 120] [--streams 64] [--max-tokens 32] [--server-args '--torch-threads 1']

Starts the real server (``python -m service``) on loopback with the built-in
tiny model and drives it with asyncio gRPC stubs: ``--streams`` workers each
run Generate streams back to back, one trainer runs TrainSteps back to back.
Every RPC error counts as unexpected. The server's resident memory is sampled
once a second; growth is measured from the end of the warm-up to the end of
the run, and latency percentiles count only calls that started after the
warm-up. Prints a table and writes tests/bench/results/<date>-soak.json.
Exit status 1 when there were errors or RSS grew by 5 % or more.

Not a test: pytest does not collect it (the name does not start with test_).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import random
import shlex
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
from tandem.v1 import tandem_pb2 as pb
from tandem.v1 import tandem_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.support.server import ServerProcess, start_server  # noqa: E402

RSS_GROWTH_LIMIT = 0.05
TRAIN = pb.TrainStepRequest(
    sequences=[pb.TrainSequence(prompt=f"The people {i}", completion=" say hello to the water") for i in range(4)],
    optimizer=pb.OptimizerConfig(learning_rate=1e-4),
)


@dataclass(frozen=True)
class Call:
    """One finished call."""

    rpc: str
    started_at: float
    """Seconds into the run."""
    seconds: float
    first_token_seconds: float | None = None


@dataclass
class Tally:
    """What the workers saw."""

    calls: list[Call] = field(default_factory=list)
    tokens: int = 0
    errors: Counter = field(default_factory=Counter)
    started: float = field(default_factory=time.perf_counter)

    def record(self, rpc: str, started: float, first_token_seconds: float | None = None) -> None:
        """Note one finished call that started at perf_counter() ``started``."""
        self.calls.append(Call(rpc, started - self.started, time.perf_counter() - started, first_token_seconds))

    def latencies(self, rpc: str, after: float, first_token: bool = False) -> list[float]:
        """Latencies (or times to first token) of ``rpc`` calls that started ``after`` seconds into the run or later."""
        picked = [c for c in self.calls if c.rpc == rpc and c.started_at >= after]
        return [c.first_token_seconds for c in picked if c.first_token_seconds is not None] if first_token else [c.seconds for c in picked]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def generate_worker(stub, tally: Tally, stop_at: float, max_tokens: int, worker: int) -> None:
    rng = random.Random(worker)
    while time.monotonic() < stop_at:
        prompt = [1, *(rng.randrange(3, 1000) for _ in range(rng.randrange(4, 32)))]
        request = pb.GenerateRequest(
            prompts=[pb.Prompt(token_ids=pb.TokenIds(ids=prompt))],
            sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=rng.choice([0.0, 0.7, 1.0]), seed=rng.randrange(2**32), ignore_eos=True),
        )
        started = time.perf_counter()
        first = None
        try:
            async for chunk in stub.Generate(request, timeout=300):
                if first is None and chunk.token_ids:
                    first = time.perf_counter() - started
                tally.tokens += len(chunk.token_ids)
        except grpc.aio.AioRpcError as error:
            tally.errors[f"Generate {error.code().name}: {error.details()}"] += 1
            continue
        tally.record("Generate", started, first)


async def train_worker(stub, tally: Tally, stop_at: float) -> None:
    while time.monotonic() < stop_at:
        started = time.perf_counter()
        try:
            reply = await stub.TrainStep(TRAIN, timeout=300)
        except grpc.aio.AioRpcError as error:
            tally.errors[f"TrainStep {error.code().name}: {error.details()}"] += 1
            continue
        if reply.outcome != pb.STEP_OUTCOME_APPLIED:
            tally.errors[f"TrainStep outcome {pb.StepOutcome.Name(reply.outcome)}"] += 1
        tally.record("TrainStep", started)


async def sample_rss(pid: int, samples: list[tuple[float, int]], stop_at: float, started: float) -> None:
    while time.monotonic() < stop_at:
        samples.append((time.monotonic() - started, rss_bytes(pid)))
        await asyncio.sleep(1.0)


async def soak(server: ServerProcess, args: argparse.Namespace) -> tuple[Tally, list[tuple[float, int]]]:
    samples: list[tuple[float, int]] = []
    tally = Tally()
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = tandem_pb2_grpc.TandemServiceStub(channel)
        started = time.monotonic()
        stop_at = started + args.duration
        workers = [generate_worker(stub, tally, stop_at, args.max_tokens, i) for i in range(args.streams)]
        await asyncio.gather(*workers, train_worker(stub, tally, stop_at), sample_rss(server.process.pid, samples, stop_at, started))
    return tally, samples


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by the nearest-rank method; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def rss_growth(samples: list[tuple[float, int]], warmup: float) -> tuple[int, int, float]:
    """(RSS at the end of warm-up, RSS at the end, growth): medians of 5 samples at each end, to ignore one-off spikes."""
    after = [rss for t, rss in samples if t >= warmup]
    start, end = statistics.median(after[:5]), statistics.median(after[-5:])
    return int(start), int(end), (end - start) / start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of load (default %(default)s)")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds before the RSS baseline is taken (default %(default)s)")
    parser.add_argument("--streams", type=int, default=64, help="concurrent Generate workers (default %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per Generate (default %(default)s)")
    parser.add_argument("--server-args", default="", help="extra server flags, e.g. '--torch-threads 1'")
    parser.add_argument("--output", type=Path, default=REPO / "tests" / "bench" / "results" / f"{datetime.date.today()}-soak.json")
    args = parser.parse_args()
    if args.duration < args.warmup + 10:
        parser.error("--duration must exceed --warmup by at least 10 s (RSS needs samples after the warm-up)")

    with tempfile.TemporaryDirectory(prefix="tandem-soak-") as scratch:
        server = start_server(Path(scratch) / "cache", Path(scratch) / "logs", *shlex.split(args.server_args))
        try:
            cpu_before = cpu_seconds(server.process.pid)
            tally, samples = asyncio.run(soak(server, args))
            server_cores = (cpu_seconds(server.process.pid) - cpu_before) / args.duration
        finally:
            exit_code = server.stop()
    start_rss, end_rss, growth = rss_growth(samples, args.warmup)
    errors = sum(tally.errors.values())
    generate, train = tally.latencies("Generate", args.warmup), tally.latencies("TrainStep", args.warmup)
    first_token = tally.latencies("Generate", args.warmup, first_token=True)
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
        "command": shlex.join(["python", "tests/bench/soak.py", *sys.argv[1:]]),
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "generate_calls": sum(c.rpc == "Generate" for c in tally.calls),
        "generated_tokens": tally.tokens,
        "generated_tokens_per_second": tally.tokens / args.duration,
        "latencies_exclude_calls_started_in_warmup": True,
        "generate_p50_seconds": percentile(generate, 50),
        "generate_p99_seconds": percentile(generate, 99),
        "first_token_p50_seconds": percentile(first_token, 50),
        "first_token_p99_seconds": percentile(first_token, 99),
        "train_steps": sum(c.rpc == "TrainStep" for c in tally.calls),
        "train_p50_seconds": percentile(train, 50),
        "train_p99_seconds": percentile(train, 99),
        "slowest_calls": [asdict(c) for c in sorted(tally.calls, key=lambda c: -c.seconds)[:5]],
        "server_cpu_cores_used": server_cores,
        "unexpected_errors": errors,
        "error_kinds": dict(tally.errors),
        "rss_after_warmup_bytes": start_rss,
        "rss_at_end_bytes": end_rss,
        "rss_growth": growth,
        "rss_every_10_seconds_mib": [round(rss / 2**20, 1) for t, rss in samples[::10]],
        "server_exit_code": exit_code,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    rows = [
        ("Generate calls", f"{record['generate_calls']} ({record['generated_tokens']} tokens, {record['generated_tokens_per_second']:.0f} tok/s)"),
        ("Generate latency p50 / p99 (after warm-up)", f"{record['generate_p50_seconds']:.3f} s / {record['generate_p99_seconds']:.3f} s"),
        ("first token p50 / p99 (after warm-up)", f"{record['first_token_p50_seconds']:.3f} s / {record['first_token_p99_seconds']:.3f} s"),
        ("TrainStep calls", str(record["train_steps"])),
        ("TrainStep latency p50 / p99 (after warm-up)", f"{record['train_p50_seconds']:.3f} s / {record['train_p99_seconds']:.3f} s"),
        ("server CPU (cores busy on average)", f"{server_cores:.2f}"),
        ("unexpected errors", f"{errors} {dict(tally.errors) or ''}"),
        ("server RSS after warm-up -> end", f"{start_rss / 2**20:.1f} MiB -> {end_rss / 2**20:.1f} MiB ({growth:+.2%})"),
        ("server exit code after SIGTERM", str(exit_code)),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"soak: {args.streams} Generate streams + 1 TrainStep loop for {args.duration:.0f} s on {record['machine']}")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print(f"  written to {args.output.relative_to(REPO) if args.output.is_relative_to(REPO) else args.output}")
    return 0 if errors == 0 and growth < RSS_GROWTH_LIMIT and exit_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
