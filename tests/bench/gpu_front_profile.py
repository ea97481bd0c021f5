"""Where the server's processes spend their CPU while 256 Generate RPCs run (a diagnostic program, GPU only).

    python tests/bench/gpu_front_profile.py --work DIR [--runs 6] [--mode text|ids|one_rpc] [--out DIR]

Starts ``python -m service`` on the benchmark's workload (gpu_workload.py) with the
compile cache of an earlier ``gpu_bench.py --work DIR`` (warm), loads the model, makes
one warm-up run, then samples the front process and the engine-core process with
py-spy (``pip install py-spy``) during ``--runs`` more runs and writes, per process,
py-spy's collapsed stacks (``<process>.stacks``) and a summary (``front-profile.json``):
the functions that held the CPU longest (own samples) and the frames most often
on the stack (inclusive), as shares of all samples. The runs' rates are printed with
it; they carry py-spy's sampling cost and are not benchmark figures.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.bench.gpu_bench import Clock, child_environment, load_model, nvidia_smi, process_tree, start_tandem, stop_tandem, tandem_generate  # noqa: E402

SAMPLE_RATE = 200
"""py-spy samples per second per process."""
TOP = 40


def summarize(stacks: Path) -> dict:
    """Own and inclusive sample shares of the TOP busiest frames in py-spy's collapsed stacks (``a;b;c count``)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in stacks.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        samples = int(count)
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples

    def shares(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(frame, round(n / max(total, 1), 4)) for frame, n in counter.most_common(TOP)]

    return {"samples": total, "own": shares(own), "inclusive": shares(inclusive)}


def record(pid: int, path: Path) -> subprocess.Popen:
    """py-spy sampling ``pid`` (idle time left out) until it is sent SIGINT; collapsed stacks into ``path``."""
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    command = [py_spy, "record", "--pid", str(pid), "--rate", str(SAMPLE_RATE), "--format", "raw", "--output", str(path), "--nonblocking"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def engine_core(front: int) -> int:
    """The server's process that holds GPU memory: vLLM's engine core (the front never touches CUDA)."""
    on_gpu = {int(row[0]) for row in nvidia_smi("pid", "compute-apps")}
    [engine] = (process_tree(front) - {front}) & on_gpu
    return engine


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="an earlier gpu_bench.py --work: its model cache and warm compile cache")
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--mode", choices=["text", "ids", "one_rpc"], default="text")
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    server = start_tandem(args.work / "cache", args.work / "logs", child_environment(args.work / "compile-cache"))
    try:
        load = load_model(server, timeout=300)
        print(f"LoadModel {load['seconds']:.1f} s", flush=True)
        tandem_generate(server, args.mode)
        front = server.process.pid
        targets = {"front": front, "engine": engine_core(front)}
        samplers = {name: record(pid, args.out / f"{name}.stacks") for name, pid in targets.items()}
        time.sleep(1.0)  # py-spy attaches
        rates = [round(tandem_generate(server, args.mode)["tokens_per_second"]) for _ in range(args.runs)]
        for sampler in samplers.values():
            sampler.send_signal(signal.SIGINT)
        for name, sampler in samplers.items():
            _, errors = sampler.communicate(timeout=60)
            if sampler.returncode not in (0, -signal.SIGINT):
                print(f"py-spy on {name} ended with {sampler.returncode}: {errors[-2000:]}", flush=True)
        summary = {
            "mode": args.mode,
            "runs_tokens_per_second_under_py_spy": rates,
            **{name: summarize(args.out / f"{name}.stacks") for name in targets if (args.out / f"{name}.stacks").exists()},
        }
        (args.out / "front-profile.json").write_text(json.dumps(summary, indent=1))
        print(json.dumps(summary, indent=1), flush=True)
    finally:
        stop_tandem(server, Clock(60.0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
