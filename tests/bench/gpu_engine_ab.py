"""Where the time between vLLM's AsyncLLM and Tandem's Generate goes, layer by layer (a GPU diagnostic).

    python tests/bench/gpu_engine_ab.py --work DIR [--rounds 8] [--budget 540] [--profile] [--out DIR]

gpu_bench.py compares Tandem through gRPC with vLLM alone; between the two lie
Tandem's engine process and its front. This program runs, on one GPU, one
program, the benchmark's workload (gpu_workload.py: 256 prompts of 128 token
ids, 256 new tokens each, whole samples) through four sides that each add one
layer to the one before, their runs interleaved in rounds (the order rotates
each round) so that drift reaches all alike:

- ``async_llm``: AsyncLLM as vLLM starts it (engine core spawned), the adapter
  from its directory: the GPU benchmark's AsyncLLM baseline.
- ``async_llm_fork_server``: the same, its engine core forked from Tandem's
  fork server (``engine_launch.py``).
- ``tandem_host``: Tandem's ``VllmHost`` without gRPC: its engine process (fork
  server, the trainer built in vLLM's worker, the trained adapter in its pinned
  in-memory LoRA slot, prefix-cache salts) and its per-sample front code.
- ``tandem``: Tandem's server, 256 concurrent Generate RPCs (gpu_bench.py's client).

Each side makes one warm-up run per mode, then ``--rounds`` runs per mode
(text, ids) while the budget lasts. Printed and written (``<date>-engine-ab-<gpu>.json``):
per side and mode, the median rate, its ratio to ``async_llm`` and the median
of the per-round paired ratios. ``--profile`` then samples each side's
engine-core process (and Tandem's front) with py-spy during two more text runs
and adds the busiest frames to the record (rates under py-spy are not figures).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from service.tiny_model import ensure_builtin_model  # noqa: E402
from tests.bench.gpu_bench import (  # noqa: E402
    PEFT,
    Baseline,
    BaselineProcess,
    Clock,
    check_tokens,
    child_environment,
    commit,
    device_used_mib,
    load_model,
    nvidia_smi,
    process_tree,
    start_tandem,
    stop_tandem,
    tandem_generate,
    versions,
)
from tests.bench.gpu_front_profile import record as py_spy, summarize  # noqa: E402
from tests.bench.gpu_workload import MODEL  # noqa: E402

ENGINE_SIDES = (
    Baseline("async_llm", "async_llm", "1", "AsyncLLM, engine core spawned (vLLM's own start)"),
    Baseline("async_llm_fork_server", "async_llm", "1", "AsyncLLM, engine core forked from Tandem's fork server", ("--fork-server",)),
    Baseline("tandem_host", "tandem_host", "1", "Tandem's VllmHost without gRPC: engine process with the trainer, in-memory adapter"),
)
TANDEM = "tandem"
"""The fourth side: Tandem's server through gRPC."""
REFERENCE = "async_llm"
MODES = ("text", "ids")
RUN_SECONDS = 4.0
"""What one run is allowed in the budget (about 2 s on an H100)."""
PROFILED_RUNS = 2


def engine_core(root: int) -> int:
    """The process under ``root`` that holds GPU memory: the engine core (no front touches CUDA)."""
    on_gpu = {int(row[0]) for row in nvidia_smi("pid", "compute-apps")}
    [engine] = (process_tree(root) - {root}) & on_gpu
    return engine


class Sides:
    """The four sides, up: ``run(name, mode)`` makes one run of one."""

    def __init__(self, work: Path, clock: Clock) -> None:
        self.clock = clock
        self.cache_dir, self.adapter_dir, self.logs = work / "cache", work / "adapter", work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = child_environment(work / "compile-cache")
        self.engines: dict[str, BaselineProcess] = {}
        self.server = None
        self.start_seconds: dict[str, float] = {}

    def start(self) -> None:
        """The PEFT process saves the baselines' adapter and stops; then each side starts, one after another."""
        ensure_builtin_model(MODEL, self.cache_dir)
        peft = BaselineProcess(PEFT, self.cache_dir, self.adapter_dir, self.logs, self.env)
        try:
            peft.wait_ready(timeout=300)
        finally:
            peft.stop()
        for side in ENGINE_SIDES:
            started = time.monotonic()
            process = self.engines[side.name] = BaselineProcess(side, self.cache_dir, self.adapter_dir, self.logs, self.env)
            process.wait_ready(timeout=max(60.0, self.clock.left()))
            self.started(side.name, started)
        started = time.monotonic()
        self.server = start_tandem(self.cache_dir, self.logs, self.env)
        load_model(self.server, timeout=max(60.0, self.clock.left()))
        self.started(TANDEM, started)

    def started(self, name: str, since: float) -> None:
        self.start_seconds[name] = round(time.monotonic() - since, 1)
        self.clock.log(f"{name} up in {self.start_seconds[name]} s")

    @property
    def names(self) -> list[str]:
        return [*self.engines, TANDEM]

    def run(self, name: str, mode: str) -> dict:
        """One full-size run: tokens, seconds, tokens_per_second, replies (and for Tandem the processes' CPU)."""
        if name == TANDEM:
            result = tandem_generate(self.server, mode)
            check_tokens(name, result)
            return result
        return self.engines[name].run(mode)

    def engine_pid(self, name: str) -> int:
        return engine_core(self.server.process.pid if name == TANDEM else self.engines[name].process.pid)

    def close(self) -> None:
        for process in self.engines.values():
            process.stop()
        if self.server is not None:
            stop_tandem(self.server, self.clock)


def interleave(sides: Sides, rounds: int, clock: Clock) -> dict[str, dict[str, list[dict]]]:
    """One warm-up run per side and mode, then rounds of one run per side and mode, the order rotated each round."""
    runs: dict[str, dict[str, list[dict]]] = {name: {mode: [] for mode in MODES} for name in sides.names}
    for name in sides.names:
        for mode in MODES:
            sides.run(name, mode)
    order = sides.names
    for number in range(rounds):
        if not clock.fits(RUN_SECONDS * len(order) * len(MODES)):
            clock.log(f"budget: stopped after {number} rounds")
            break
        for mode in MODES:
            for name in order:
                runs[name][mode].append(sides.run(name, mode))
        clock.log("round %d: %s" % (number + 1, ", ".join(f"{n} {runs[n]['text'][-1]['tokens_per_second']:,.0f}/{runs[n]['ids'][-1]['tokens_per_second']:,.0f}" for n in order)))
        order = order[1:] + order[:1]
    return runs


def figures(runs: dict[str, dict[str, list[dict]]]) -> dict[str, dict[str, dict]]:
    """Per side and mode: median rate, its ratio to REFERENCE's median, the median of per-round paired ratios."""
    result: dict[str, dict[str, dict]] = {}
    for name, modes in runs.items():
        for mode, side_runs in modes.items():
            reference = runs[REFERENCE][mode]
            rates = [r["tokens_per_second"] for r in side_runs]
            if not rates:
                continue
            median = statistics.median(rates)
            paired = [r["tokens_per_second"] / b["tokens_per_second"] for r, b in zip(side_runs, reference)]
            result.setdefault(name, {})[mode] = {
                "runs": len(rates),
                "tokens_per_second_median": round(median),
                "vs_async_llm": round(median / statistics.median(b["tokens_per_second"] for b in reference), 3),
                "paired_vs_async_llm": round(statistics.median(paired), 3),
                "reply_last_p50_ms_median": round(statistics.median(r["replies"]["last_p50_ms"] for r in side_runs), 1),
            }
    return result


def profile(sides: Sides, out: Path) -> dict:
    """py-spy on each side's engine core (and Tandem's front) during PROFILED_RUNS text runs of that side."""
    summaries = {}
    for name in sides.names:
        targets = {f"{name}-engine": sides.engine_pid(name)}
        if name == TANDEM:
            targets[f"{name}-front"] = sides.server.process.pid
        samplers = {target: py_spy(pid, out / f"{target}.stacks") for target, pid in targets.items()}
        time.sleep(1.0)  # py-spy attaches
        rates = [round(sides.run(name, "text")["tokens_per_second"]) for _ in range(PROFILED_RUNS)]
        for sampler in samplers.values():
            sampler.send_signal(signal.SIGINT)
        for target, sampler in samplers.items():
            sampler.communicate(timeout=60)
            stacks = out / f"{target}.stacks"
            if stacks.exists():
                summaries[target] = {"rates_under_py_spy": rates, **summarize(stacks)}
    return summaries


def print_table(table: dict[str, dict[str, dict]]) -> None:
    print(f"\n{'side':24} {'mode':5} {'runs':>4} {'tok/s':>8} {'vs async_llm':>13} {'paired':>7} {'reply p50 ms':>13}")
    for name, modes in table.items():
        for mode, f in modes.items():
            print(f"{name:24} {mode:5} {f['runs']:4} {f['tokens_per_second_median']:8,} {f['vs_async_llm']:13.3f} {f['paired_vs_async_llm']:7.3f} {f['reply_last_p50_ms_median']:13.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="work directory (model, adapter, compile cache, logs); default a new temporary one")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for the whole program")
    parser.add_argument("--profile", action="store_true", help="py-spy the engine cores after the rounds (needs py-spy)")
    parser.add_argument("--out", type=Path, default=REPO / "tests/bench/results")
    args = parser.parse_args(argv)
    clock = Clock(args.budget)
    work = args.work or Path(tempfile.mkdtemp(prefix="tandem-engine-ab-"))
    gpu = nvidia_smi("name")[0][0]
    clock.log(f"{gpu}, {device_used_mib()} MiB in use")
    sides = Sides(work, clock)
    record: dict = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "gpu": gpu,
        "command": "python tests/bench/gpu_engine_ab.py" + (" --profile" if args.profile else ""),
        "commit": commit(),
        "versions": versions(),
        "sides": {side.name: side.label for side in ENGINE_SIDES} | {TANDEM: "Tandem's server, 256 concurrent Generate RPCs (whole samples)"},
    }
    try:
        sides.start()
        record["start_seconds"] = sides.start_seconds
        record["runs"] = interleave(sides, args.rounds, clock)
        record["figures"] = figures(record["runs"])
        print_table(record["figures"])
        if args.profile and clock.fits(60.0):
            record["profile"] = profile(sides, work)
    finally:
        sides.close()
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"{datetime.date.today()}-engine-ab-{re.sub(r'[^a-z0-9]+', '-', gpu.lower()).strip('-')}.json"
        path.write_text(json.dumps(record, indent=1))
        clock.log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
