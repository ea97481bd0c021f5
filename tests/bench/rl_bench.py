"""RL loop benchmark: the same GRPO workload through Tandem, Unsloth and TRL, each in a process of its own.

    python tests/bench/rl_bench.py [--steps 20] [--tools tandem,unsloth,trl] [--out DIR] [--quick] [--eager]
                                   [--model NAME] [--gpus 0,1,2] [--time-budget 540] [--trl-base nf4]

The workload (rl_workload.py): the 1.1B-shaped built-in model in NF4, LoRA
r64 on all seven projections, 32 prompts x 8 samples per step, 256 new
tokens, a reverse-the-digits reward, PPO-clipped loss without a KL term,
constant LR, torch AdamW, gradient checkpointing, vLLM at 0.5 of GPU memory.
--steps timed steps follow one warm-up step. Per tool it reports steps per
minute, samples per second, the time split (sampling / training / weight
sync), peak GPU memory (NVML, device-wide, above the level before the tool
started) and the mean reward of the first and last timed steps.

The run keeps to --time-budget seconds in all. Tools run one after another
on the first GPU, each given an equal share of what is left; a tool stops
after the last step that fits its share (the record says how many it made).
--gpus runs them at once, one GPU each, each with the whole budget. A tool
that fails records its error; the others still run. TRL on NF4 that fails
before its first timed step is run again on a bf16 base (--trl-base).

Writes tests/bench/results/<date>-rl-<gpu>[-quick].json and a PNG beside it
(when matplotlib is installed), and prints a table. On a machine without an
NVIDIA GPU, Tandem samples with its transformers engine and the model
defaults to tandem/tiny: ``--tools tandem --quick`` is a CPU smoke run.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.bench.rl_workload import Workload, quick  # noqa: E402

GIB = 2**30
TOOLS = ("tandem", "unsloth", "trl")
CPU_MODEL = "tandem/tiny"
"""The default model without an NVIDIA GPU (Tandem's transformers engine): a smoke run, not a measurement."""
IDLE_SLACK = GIB
"""GPU memory above the level at the start of the run that still counts as idle."""
KILL_GRACE = 25.0
"""Seconds a tool may run past its deadline (finishing a step, shutting down) before it is killed."""
FALLBACK_MIN_SECONDS = 150.0
"""Least time left for TRL's second attempt on a bf16 base (engine start plus a few steps); --quick needs less."""
GOALS = {"tandem_vs_unsloth_steps_per_minute": 1.0, "tandem_vs_trl_steps_per_minute": 1.5}
VERSIONS = ("torch", "vllm", "transformers", "peft", "bitsandbytes", "trl", "unsloth", "unsloth_zoo", "datasets", "grpcio", "triton")


class Gpu:
    """NVML access: the GPU count, names and used memory (NVML indices; workers get CUDA_DEVICE_ORDER=PCI_BUS_ID)."""

    def __init__(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            self.count = pynvml.nvmlDeviceGetCount()
            self.nvml = pynvml
        except Exception:  # no NVML library or no driver: a CPU machine
            self.count, self.nvml = 0, None

    @property
    def present(self) -> bool:
        """Whether there is an NVIDIA GPU."""
        return self.count > 0

    def name(self, index: int = 0) -> str:
        """The GPU's product name, or "cpu"."""
        if not self.present:
            return "cpu"
        name = self.nvml.nvmlDeviceGetName(self.nvml.nvmlDeviceGetHandleByIndex(index))
        return name.decode() if isinstance(name, bytes) else name

    def used_bytes(self, index: int) -> int:
        """Device-wide memory in use on GPU ``index``, every process counted."""
        return int(self.nvml.nvmlDeviceGetMemoryInfo(self.nvml.nvmlDeviceGetHandleByIndex(index)).used)

    def wait_released(self, index: int, level: int, timeout: float = 30.0) -> None:
        """Wait (at most ``timeout`` s) until GPU ``index`` is back within IDLE_SLACK of ``level``: the previous
        tool's processes are gone, and the next vLLM engine finds the free memory it asks for."""
        deadline = time.monotonic() + timeout
        while self.used_bytes(index) > level + IDLE_SLACK and time.monotonic() < deadline:
            time.sleep(0.5)


class MemoryPeak:
    """Polls a GPU's used memory in a thread; the peak above the level at start."""

    def __init__(self, gpu: Gpu, index: int | None, interval: float = 0.2) -> None:
        self.gpu, self.index, self.interval = gpu, index, interval
        self.baseline = self.peak = gpu.used_bytes(index) if index is not None else 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.gpu.used_bytes(self.index))

    def __enter__(self) -> MemoryPeak:
        if self.index is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def peak_gib(self) -> float | None:
        """Peak GiB above the baseline; None without a GPU."""
        return (self.peak - self.baseline) / GIB if self.index is not None else None


@dataclass
class Run:
    """Where one tool's process writes and what it is given."""

    tool: str
    work: Path
    model_dir: Path
    cache_dir: Path
    gpu_index: int | None
    deadline: float
    idle_bytes: int = 0
    """GPU memory in use on this tool's GPU when the run started."""
    trl_base: str = "nf4"
    events: list[dict] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The tool, with TRL's base when it is not NF4."""
        return self.tool if self.tool != "trl" or self.trl_base == "nf4" else f"trl-{self.trl_base}"

    @property
    def progress(self) -> Path:
        return self.work / f"{self.label}.jsonl"

    @property
    def log(self) -> Path:
        return self.work / f"{self.label}.log"


def worker_env(run: Run) -> dict[str, str]:
    """The tool process's environment: its GPU only, a vLLM compile cache of its own (cold, as each tool's first start), no hub access."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_CACHE_ROOT": str(run.work / run.label / "vllm-cache")}
    if run.gpu_index is not None:
        env.update(CUDA_DEVICE_ORDER="PCI_BUS_ID", CUDA_VISIBLE_DEVICES=str(run.gpu_index))
    return env


def execute(run: Run, workload: Workload, gpu: Gpu) -> dict:
    """Run one tool's process to its end or its deadline (plus grace); its summary, peak memory included."""
    run.work.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(REPO / "tests/bench/rl_peers.py"), run.tool, "--workload", workload.to_json()]
    command += ["--model-dir", str(run.model_dir), "--cache-dir", str(run.cache_dir), "--work", str(run.work / run.label)]
    command += ["--progress", str(run.progress), "--deadline", str(run.deadline), "--trl-base", run.trl_base]
    killed = False
    if run.gpu_index is not None:
        gpu.wait_released(run.gpu_index, run.idle_bytes)
    with MemoryPeak(gpu, run.gpu_index) as memory, run.log.open("w") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=worker_env(run), start_new_session=True)
        try:
            process.wait(timeout=max(1.0, run.deadline + KILL_GRACE - time.time()))
        except subprocess.TimeoutExpired:
            killed = True
        stop_group(process)
    run.events = read_events(run.progress)
    return summarize(run, workload, process.returncode, killed, memory.peak_gib)


def stop_group(process: subprocess.Popen) -> None:
    """SIGKILL the tool's process group (the tool and what it started: Tandem's server, vLLM's engine core),
    so nothing of it holds the GPU when the next tool starts."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def read_events(path: Path) -> list[dict]:
    """The progress file's events (none if the tool never started)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarize(run: Run, workload: Workload, returncode: int, killed: bool, peak_gib: float | None) -> dict:
    """Figures from the timed (non-warm-up) steps; the error text when the tool failed."""
    steps = [e for e in run.events if e["event"] == "step" and not e["warmup"]]
    error = next((e["error"] for e in run.events if e["event"] == "error"), None)
    done = next((e for e in run.events if e["event"] == "done"), None)
    ready = next((e for e in run.events if e["event"] == "ready"), None)
    if error is None and done is None:
        error = f"{'killed at its deadline' if killed else f'exited with {returncode}'} before it finished; log tail:\n{tail(run.log)}"
    elif error is None and not steps:
        error = f"no timed step within its time budget (loading took {ready['load_seconds']:.0f} s)" if ready else "stopped before loading finished"
    result: dict = {
        "tool": run.label,
        "ok": error is None,
        "stopped": done["stopped"] if done else ("killed" if killed else "error"),
        "error": error,
        "load_seconds": ready["load_seconds"] if ready else None,
        "timed_steps": len(steps),
        "peak_gpu_memory_gib": peak_gib,
        "curve": [e["reward"] for e in run.events if e["event"] == "step"],
    }
    if steps:
        wall = sum(s["seconds"] for s in steps)
        result.update(
            steps_per_minute=60.0 * len(steps) / wall,
            samples_per_second=sum(s["samples"] for s in steps) / wall,
            completion_tokens_per_second=sum(s["completion_tokens"] for s in steps) / wall,
            mean_step_seconds=wall / len(steps),
            split_seconds={phase: statistics.fmean(s[phase] for s in steps) for phase in ("sampling", "training", "sync")},
            reward_first=steps[0]["reward"],
            reward_last=steps[-1]["reward"],
        )
    return result


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log."""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def run_tool(run: Run, workload: Workload, gpu: Gpu, quick_run: bool) -> list[dict]:
    """One tool's summaries: one, or for TRL on NF4 that failed before a timed step, also its bf16 retry."""
    results = [safe_execute(run, workload, gpu)]
    first = results[0]
    retry_needs = 30.0 if quick_run else FALLBACK_MIN_SECONDS
    if run.tool == "trl" and run.trl_base == "nf4" and not first["timed_steps"] and first["error"] and run.deadline - time.time() > retry_needs:
        print(f"  trl on NF4 failed ({first['error'].strip().splitlines()[-1][:160]}); again on a bf16 base", flush=True)
        results.append(safe_execute(replace(run, trl_base="bf16", events=[]), workload, gpu))
    return results


def safe_execute(run: Run, workload: Workload, gpu: Gpu) -> dict:
    """:func:`execute`, with a failure of this program around the tool recorded as the tool's error (the others still run)."""
    try:
        return execute(run, workload, gpu)
    except Exception as error:
        return {"tool": run.label, "ok": False, "stopped": "error", "error": f"rl_bench.py: {error!r}", "timed_steps": 0, "peak_gpu_memory_gib": None, "curve": []}


def run_all(tools: list[str], workload: Workload, gpu: Gpu, args: argparse.Namespace, model_dir: Path, cache_dir: Path, work: Path, end: float) -> list[dict]:
    """Every tool, one after another on one GPU (equal shares of the time left) or at once on --gpus."""

    idle = {index: gpu.used_bytes(index) for index in (args.gpus or [0])} if gpu.present else {}

    def make(tool: str, gpu_index: int | None, deadline: float) -> Run:
        return Run(tool, work, model_dir, cache_dir, gpu_index, deadline, idle.get(gpu_index, 0), trl_base=args.trl_base)

    if args.gpus:
        results: dict[str, list[dict]] = {}

        def one(tool: str, index: int) -> None:
            results[tool] = run_tool(make(tool, index, end - KILL_GRACE), workload, gpu, args.quick)
            print(f"  {describe(results[tool][-1])} (GPU {index})", flush=True)

        print(f"{', '.join(tools)} at once on GPUs {args.gpus[: len(tools)]}, up to {end - time.time():.0f} s ...", flush=True)

        threads = [threading.Thread(target=one, args=(tool, index)) for tool, index in zip(tools, args.gpus)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return [r for tool in tools for r in results[tool]]
    ordered = []
    for position, tool in enumerate(tools):
        share = (end - time.time()) / (len(tools) - position)
        print(f"{tool}: up to {share:.0f} s ...", flush=True)
        ordered += run_tool(make(tool, 0 if gpu.present else None, time.time() + share - KILL_GRACE), workload, gpu, args.quick)
        print(f"  {describe(ordered[-1])}", flush=True)
    return ordered


def describe(result: dict) -> str:
    """One line on a tool's outcome."""
    if not result["timed_steps"]:
        return f"{result['tool']}: FAILED: {(result['error'] or 'no timed step').strip().splitlines()[-1][:200]}"
    return f"{result['tool']}: {result['timed_steps']} timed steps, {result['steps_per_minute']:.2f} steps/min, stopped by {result['stopped']}"


def ratios(results: list[dict]) -> dict:
    """Tandem against each peer that produced figures: steps per minute and peak memory."""
    by_tool = {r["tool"]: r for r in results if r["timed_steps"]}
    tandem = by_tool.get("tandem")
    out: dict = {}
    if tandem is None:
        return out
    for name, peer in by_tool.items():
        if name == "tandem":
            continue
        out[f"tandem_vs_{name}_steps_per_minute"] = tandem["steps_per_minute"] / peer["steps_per_minute"]
        if tandem["peak_gpu_memory_gib"] is not None and peer["peak_gpu_memory_gib"]:
            out[f"tandem_vs_{name}_peak_memory"] = tandem["peak_gpu_memory_gib"] / peer["peak_gpu_memory_gib"]
    return out


def versions() -> dict:
    """Installed versions of what the tools run on."""
    found = {}
    for name in VERSIONS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def print_table(results: list[dict], compared: dict) -> None:
    """The figures, one row per tool; a failed tool shows its error's last line."""
    header = f"{'tool':10} {'steps/min':>9} {'samples/s':>9} {'sample s':>8} {'train s':>8} {'sync s':>7} {'peak GiB':>8} {'reward first->last':>18} {'steps':>5}  stopped"
    print("\n" + header)
    for r in results:
        if not r["timed_steps"]:
            print(f"{r['tool']:10} FAILED: {(r['error'] or '').strip().splitlines()[-1][:110] if r['error'] else 'no timed step'}")
            continue
        split = r["split_seconds"]
        memory = f"{r['peak_gpu_memory_gib']:.2f}" if r["peak_gpu_memory_gib"] is not None else "n/a"
        rewards = f"{number(r['reward_first'])} -> {number(r['reward_last'])}"
        print(
            f"{r['tool']:10} {r['steps_per_minute']:9.2f} {r['samples_per_second']:9.1f} {split['sampling']:8.2f} {split['training']:8.2f} "
            f"{split['sync']:7.3f} {memory:>8} {rewards:>18} {r['timed_steps']:5d}  {r['stopped']}"
        )
    for key, value in compared.items():
        goal = GOALS.get(key)
        print(f"{key}: {value:.2f}" + (f" (goal >= {goal}: {'met' if value >= goal else 'missed'})" if goal else ""))


def number(value: float | None) -> str:
    """A reward for the table; "n/a" when a step recorded none."""
    return "n/a" if value is None else f"{value:.3f}"


def plot(results: list[dict], path: Path, title: str) -> bool:
    """Steps per minute, time split, peak memory and reward curves; False (with a message) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: no plot written to {path}")
        return False
    measured = [r for r in results if r["timed_steps"]]
    names = [r["tool"] for r in measured]
    fig, ((speed, split), (memory, curves)) = plt.subplots(2, 2, figsize=(12, 8))
    speed.bar(names, [r["steps_per_minute"] for r in measured], color="#2a7")
    speed.set(ylabel="GRPO steps / minute", title="throughput")
    for i, r in enumerate(measured):
        speed.text(i, r["steps_per_minute"], f"{r['steps_per_minute']:.2f}", ha="center", va="bottom")
    bottom = [0.0] * len(measured)
    for phase, color in (("sampling", "#47c"), ("training", "#c74"), ("sync", "#999")):
        values = [r["split_seconds"][phase] for r in measured]
        split.bar(names, values, bottom=bottom, label=phase, color=color)
        bottom = [b + v for b, v in zip(bottom, values)]
    split.set(ylabel="seconds per step", title="time split")
    split.legend()
    memory.bar(names, [r["peak_gpu_memory_gib"] or 0.0 for r in measured], color="#888")
    memory.set(ylabel="GiB", title="peak GPU memory (NVML, above idle)")
    for r in measured:
        curve = [float("nan") if v is None else v for v in r["curve"]]
        curves.plot(range(1, len(curve) + 1), curve, marker=".", label=r["tool"])
    curves.set(xlabel="step (warm-up included)", ylabel="mean reward", title="reward")
    curves.legend()
    failed = [r["tool"] for r in results if not r["timed_steps"]]
    fig.suptitle(title + (f" (no figures: {', '.join(failed)})" if failed else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="timed GRPO steps per tool (default 20; 3 with --quick)")
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset of tandem,unsloth,trl (default all, in that order)")
    parser.add_argument("--out", type=Path, default=REPO / "tests/bench/results", help="directory of the JSON record and plot (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and eager vLLM: a smoke run of a few minutes")
    parser.add_argument("--eager", action="store_true", help="vLLM without torch.compile and CUDA graphs in every tool: faster starts, slower decoding")
    parser.add_argument("--model", default=None, help=f"built-in model (default {Workload.model} on a GPU, {CPU_MODEL} without one)")
    parser.add_argument("--gpus", default=None, help="comma-separated GPU indices, one per tool: run the tools at once (default: one after another on GPU 0)")
    parser.add_argument("--time-budget", type=float, default=540.0, help="seconds for the whole run, model making included (default %(default)s)")
    parser.add_argument("--trl-base", choices=("nf4", "bf16"), default="nf4", help="TRL's base weights (default %(default)s; NF4 failing falls back to bf16)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the built-in model is made (default: a temporary directory)")
    args = parser.parse_args(argv)
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = set(args.tools) - set(TOOLS)
    if unknown or not args.tools:
        parser.error(f"--tools: choose from {', '.join(TOOLS)} (got {args.tools})")
    if args.gpus is not None:
        args.gpus = [int(i) for i in args.gpus.split(",")]
        if len(args.gpus) < len(args.tools):
            parser.error(f"--gpus: one GPU per tool ({len(args.tools)} tools, {len(args.gpus)} GPUs)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Make the model, run the tools, write the record and the plot, print the table."""
    started = time.time()
    args = parse_args(argv)
    end = started + args.time_budget
    gpu = Gpu()
    if args.gpus and not gpu.present:
        print("--gpus: no NVIDIA GPU here", file=sys.stderr)
        return 2
    workload = Workload(fast_inference=gpu.present)
    if args.quick:
        workload = quick(workload)
    workload = replace(workload, model=args.model or (workload.model if gpu.present else CPU_MODEL))
    if args.steps is not None:
        workload = replace(workload, steps=args.steps)
    if args.eager:
        workload = replace(workload, eager=True)
    work = Path(tempfile.mkdtemp(prefix="tandem-rl-bench-"))
    cache_dir = args.cache_dir or work / "cache"
    from service.tiny_model import ensure_builtin_model

    model_dir = ensure_builtin_model(workload.model, cache_dir)
    print(f"{workload.model} ready in {time.time() - started:.0f} s; {workload.steps} timed steps of {workload.prompts} x {workload.group_size} samples", flush=True)
    results = run_all(args.tools, workload, gpu, args, model_dir, cache_dir, work, end)
    compared = ratios(results)
    device = gpu.name()
    date = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    stem = f"{date}-rl-{re.sub(r'[^a-z0-9]+', '-', device.lower()).strip('-')}" + ("-quick" if args.quick else "")
    record = {
        "date": date,
        "gpu": device,
        "command": "python tests/bench/rl_bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "versions": versions(),
        "workload": asdict(workload),
        "layout": f"at once on GPUs {args.gpus}" if args.gpus else "one after another on one device",
        "time_budget_seconds": args.time_budget,
        "wall_seconds": time.time() - started,
        "results": results,
        "compared": compared,
        "goals": GOALS,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    plotted = plot(results, args.out / f"{stem}.png", f"GRPO through Tandem, Unsloth, TRL: {workload.model}, {device}")
    print_table(results, compared)
    print(f"\nwrote {args.out / stem}.json" + (" and .png" if plotted else "") + f" in {time.time() - started:.0f} s; logs in {work}")
    return 0 if any(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
