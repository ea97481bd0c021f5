"""ghz benchmark: Generate throughput and latency at 1, 16 and 64 concurrent calls.

    python tests/bench/ghz_bench.py [--concurrency 1 16 64] [--calls-per-worker 8] [--min-calls 64]
                                    [--max-tokens 32] [--server-args '--torch-threads 1']

Starts the real server (``python -m service``) on loopback with the built-in
tiny model, warms it up with one short ghz run, then runs ghz (with the Python
client's ``tandem.protoset``) once per concurrency level for a fixed count of
calls, max(--min-calls, concurrency x --calls-per-worker). Every call asks for
exactly --max-tokens new tokens (EOS ignored), so tokens/s is calls/s times
--max-tokens. The baseline, in the same run, is the lowest concurrency level:
each level reports its throughput as a multiple of it. ghz shares the machine's
cores with the server. Prints a table and writes
tests/bench/results/<date>-ghz.json; exit status 1 when a call ended other than OK.

Not a test: pytest does not collect it (the name does not start with test_).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.support.ghz import ghz_command, generate_data, run_ghz  # noqa: E402
from tests.support.server import start_server  # noqa: E402

PROTOSET_IN_TREE = "clients/python/src/tandem/v1/tandem.protoset"
WARMUP_CONCURRENCY, WARMUP_CALLS = 4, 16


def cpu_model() -> str:
    """The processor's model name (Linux), or what ``platform`` knows."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.machine()


def ghz_version(ghz: str) -> str:
    """The ghz module version built into the binary (``go version -m``), or "unknown" without Go."""
    go = shutil.which("go")
    if go is None:
        return "unknown"
    listing = subprocess.run([go, "version", "-m", ghz], capture_output=True, text=True).stdout.split()
    return listing[listing.index("github.com/bojand/ghz") + 1] if "github.com/bojand/ghz" in listing else "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64], help="levels, lowest first (default %(default)s)")
    parser.add_argument("--calls-per-worker", type=int, default=8, help="calls per concurrent worker at each level (default %(default)s)")
    parser.add_argument("--min-calls", type=int, default=64, help="fewest calls at any level (default %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=32, help="new tokens per Generate (default %(default)s)")
    parser.add_argument("--server-args", default="", help="extra server flags, e.g. '--torch-threads 1'")
    parser.add_argument("--output", type=Path, default=REPO / "tests" / "bench" / "results" / f"{datetime.date.today()}-ghz.json")
    args = parser.parse_args()
    ghz = shutil.which("ghz") or shutil.which(str(Path.home() / "go" / "bin" / "ghz"))
    if ghz is None:
        parser.error("ghz is not installed (.ci/install.d/25-ghz.sh installs it)")
    data = generate_data(args.max_tokens)

    load_before = os.getloadavg()
    levels = []
    with tempfile.TemporaryDirectory(prefix="tandem-ghz-") as scratch:
        server = start_server(Path(scratch) / "cache", Path(scratch) / "logs", *shlex.split(args.server_args))
        try:
            run_ghz(ghz, server.address, WARMUP_CONCURRENCY, WARMUP_CALLS, data)
            for concurrency in args.concurrency:
                calls = max(args.min_calls, concurrency * args.calls_per_worker)
                run = run_ghz(ghz, server.address, concurrency, calls, data)
                levels.append(
                    {
                        "concurrency": concurrency,
                        "calls": run.count,
                        "status_codes": run.status_codes,
                        "errors": run.errors,
                        "seconds": run.seconds,
                        "calls_per_second": run.calls_per_second,
                        "generated_tokens_per_second": run.calls_per_second * args.max_tokens,
                        "latency_p50_seconds": run.latency_seconds[50],
                        "latency_p99_seconds": run.latency_seconds[99],
                        "ghz_command": shlex.join(ghz_command("ghz", "127.0.0.1:PORT", PROTOSET_IN_TREE, concurrency, calls, data)),
                    }
                )
        finally:
            exit_code = server.stop()
    baseline = levels[0]["calls_per_second"]
    for level in levels:
        level["throughput_vs_lowest_concurrency"] = level["calls_per_second"] / baseline
    unexpected = sum(count for level in levels for code, count in level["status_codes"].items() if code != "OK")
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{cpu_model()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, Python {platform.python_version()}",
        "command": shlex.join(["python", "tests/bench/ghz_bench.py", *sys.argv[1:]]),
        "load_average_1_5_15_min_before": [round(load, 2) for load in load_before],
        "ghz": ghz_version(ghz),
        "settings": {k: v for k, v in vars(args).items() if k != "output"} | {"model": "tandem/tiny", "request": data},
        "levels": levels,
        "unexpected_status_codes": unexpected,
        "server_exit_code": exit_code,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")

    print(f"ghz {record['ghz']}: Generate, {args.max_tokens} new tokens per call, on {record['machine']} (load {load_before[0]:.2f})")
    print(f"  {'concurrency':>11}  {'calls':>6}  {'calls/s':>8}  {'tokens/s':>9}  {'p50 ms':>8}  {'p99 ms':>8}  {'vs lowest':>9}  status codes")
    for level in levels:
        print(
            f"  {level['concurrency']:>11}  {level['calls']:>6}  {level['calls_per_second']:>8.1f}  {level['generated_tokens_per_second']:>9.0f}"
            f"  {level['latency_p50_seconds'] * 1e3:>8.0f}  {level['latency_p99_seconds'] * 1e3:>8.0f}"
            f"  {level['throughput_vs_lowest_concurrency']:>9.2f}  {level['status_codes']}"
        )
    print(f"  written to {args.output.relative_to(REPO) if args.output.is_relative_to(REPO) else args.output}")
    return 0 if unexpected == 0 and exit_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
