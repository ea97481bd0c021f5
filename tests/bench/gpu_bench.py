"""GPU benchmark: Tandem through gRPC against vLLM alone, in one program on one GPU.

    python tests/bench/gpu_bench.py [--part all|load|generate] [--work DIR] [--engine-compile on|off] [--train-compile on|off] [--quick] [--out tests/bench/results]
                                    [--cache-dir DIR] [--logs DIR] [--budget 540]

Workload (gpu_workload.py): the built-in 1.1B-shaped model in NF4 with a
rank-64 LoRA, gpu_memory_utilization 0.2 for every engine; Generate is 256
prompts x 128 token ids in, 256 out, ignore_eos, temperature 1; TrainStep is
8 x 512 token ids. Phases, in this order:

1. ``tandem_cold``: ``python -m service --model none`` with an empty VLLM_CACHE_ROOT:
   LoadModel seconds (cold) and GPU memory of the server's processes (nvidia-smi),
   read with nothing else on the GPU. Then the plain PEFT + bitsandbytes loop on
   TrainStep's batch starts beside the server (``gpu_baselines.py serve --engine peft``,
   its own process): it saves the rank-64 adapter the vLLM baselines serve and makes
   one warm-up step. Then rounds of pairs, one TrainStep (tokens/s, seconds.sync) then
   one PEFT step, so the machine's drift reaches both sides alike; the first of each
   side is a warm-up (Tandem's compiles the trainer's layers). The PEFT process stops,
   the server's memory after training is read, and the server stops.
2. ``baselines_adapter``: nothing when the baselines' adapter is there (phase 1 or part
   ``load`` saved it); otherwise a PEFT process starts only to save it, and stops.
3. ``vllm_alone``: the first baseline (AsyncLLM) starts on the GPU alone: its memory
   is "vLLM alone with the same settings". It stays up.
4. ``tandem_warm``: a second server on the same compile cache: LoadModel seconds
   (warm); then LoadModel once more on that running server (``tandem_reload``: the
   model is replaced, its engine stopped and a new one started); then one full-size
   warm-up Generate of each kind.
5. ``baselines_up``: the other baselines start, one after another, beside Tandem and
   the first, each in its own process (``AsyncLLM`` with 256 concurrent ``generate()``
   calls, FINAL_ONLY outputs; ``LLM.generate`` with its engine core in a child process;
   ``LLM.generate`` in-process), and each makes one full-size warm-up run (text: it
   fills the prefix cache). All four engines fit on the GPU at once (4 x 0.2).
6. ``interleave``: rounds of pairs, a Tandem run then a baseline run: in each round
   every baseline runs with detokenize on, then every baseline with it off, in an
   order rotated from round to round; Tandem's runs cycle through 256 concurrent
   Generate RPCs with text, the same with token_ids_only, one RPC of 256 prompts
   (all three asking for whole samples) and 256 RPCs streaming text. 6 rounds
   (--quick: 2): 6 runs of each baseline mode, 9 of each Tandem kind.

``--part load`` runs phases 1-4 (the server of phase 4 only loads and reloads, then
stops); ``--part generate`` runs phase 2 (the adapter, should part load not have left
it), a server (``tandem_serving``) and phases 5-6; each fits one 10-minute call, and
the second, given the same ``--work``, merges its figures into the same record and
finds the compile cache warm.

Ratios are medians against medians: Tandem's over all its runs, each baseline's
over its own, divided by the fastest baseline's (text, or detokenize off for
token_ids_only). Since every side's runs are spread over the same minutes, the
machine's drift (it slowed from phase to phase in the fourth H200 run, when the
baselines ran one after another) reaches them alike. Likewise train_vs_peft is
Tandem's median TrainStep tokens/s over PEFT's median over its paired steps (the
first pair left out), and train_vs_peft_pairs the median of each pair's own ratio
(PEFT step seconds / TrainStep wall seconds). The whole program keeps to
--budget seconds: the rounds stop early when the next pair would not leave time
to stop everything. The record (tests/bench/results/<date>-gpu-<gpu>[-quick].json: GPU,
versions, settings, every run, medians, targets met or missed) and the PNG
beside it are rewritten after every phase, so a run cut short still leaves
figures; a table is printed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import itertools
import json
import os
import queue
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCE_PATHS = [str(REPO), str(REPO / "clients/python/src")]
sys.path[:0] = SOURCE_PATHS

import grpc  # noqa: E402
from tandem.v1 import tandem_pb2 as pb  # noqa: E402
from tandem.v1 import tandem_pb2_grpc  # noqa: E402

from service.runtime.engines.vllm_backend import OPTIONS, compilation_config, engine_lora_rank  # noqa: E402
from service.tiny_model import ensure_builtin_model  # noqa: E402
from tests.bench.gpu_workload import (  # noqa: E402
    GPU_MEMORY_UTILIZATION,
    LEARNING_RATE,
    LORA_ALPHA,
    LORA_RANK,
    MODEL,
    NEW_TOKENS,
    PROMPT_TOKENS,
    PROMPTS,
    TEMPERATURE,
    TRAIN_SEQUENCE_TOKENS,
    TRAIN_SEQUENCES,
    load_request,
    load_spec,
    prompt_ids,
    reply_spread,
    train_batch,
)
from tests.bench.gpu_baselines import BASELINE_OPTIONS  # noqa: E402
from tests.support.server import ServerProcess, start_server  # noqa: E402

GIB = 2**30
MIB = 2**20
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * MIB), ("grpc.max_send_message_length", 64 * MIB)]
RUNS, QUICK_RUNS = 6, 2
"""Timed runs of each mode per baseline (Tandem makes as many runs per phase as the baseline)."""
TRAIN_STEPS, QUICK_TRAIN_STEPS = 20, 6
"""TrainSteps, each followed by one PEFT loop step; the first pair is a warm-up."""
RESERVE_SECONDS = 30.0
"""Kept for the end: stopping the server and the last baseline, the record and the plot."""
START_ESTIMATE_SECONDS = 60.0
"""A baseline engine's start (warm compile cache) until one has been measured."""
STOP_SECONDS = 10.0
"""Stopping one baseline and waiting for its GPU memory."""
RUN_TIMEOUT_SECONDS = 400.0
"""Deadline of one Generate or TrainStep call: the first TrainStep compiles the trainer's layers (72 s on the H200)."""
TANDEM_MODES = ("text", "ids", "one_rpc", "stream")
"""256 concurrent Generate RPCs returning text; the same with token_ids_only; one Generate RPC of 256 prompts:
each asks for whole samples (``whole_samples``, as the clients' collecting Generate does). ``stream``: 256
concurrent RPCs returning text that stream each sample's tokens as they come (no target: what streaming costs)."""
BASELINE_MODES = ("text", "ids")
"""vLLM detokenizing, as it does by default; ``detokenize=False``."""
RATIO_TARGETS = {
    "generate_vs_vllm": 0.95,
    "generate_ids_vs_vllm": 0.95,
    "one_rpc_vs_vllm": 0.98,
    "train_vs_peft": 1.0,
}
UPPER_BOUNDS = {"lora_sync_ms_p50": 10.0, "load_seconds_cold": 60.0, "load_seconds_warm": 30.0}
MEMORY_SLACK_GIB = 0.25
"""extra_gib_vs_vllm_alone may exceed the adapter and its optimizer state by this much."""


@dataclass(frozen=True)
class Baseline:
    """One vLLM baseline: how gpu_baselines.py serves it."""

    name: str
    engine: str
    multiprocessing: str
    """VLLM_ENABLE_V1_MULTIPROCESSING for its process (AsyncLLM always has a child engine core)."""
    label: str
    options: tuple[str, ...] = ()
    """More ``gpu_baselines.py serve`` arguments."""


BASELINES = (
    Baseline("async_llm", "async_llm", "1", "AsyncLLM, 256 concurrent generate()"),
    Baseline("llm_child_core", "llm", "1", "LLM.generate, engine core in a child"),
    Baseline("llm_in_process", "llm", "0", "LLM.generate, engine core in-process"),
)
"""The first also measures vLLM alone: AsyncLLM with a child engine core is Tandem's own layout."""
PEFT = Baseline("peft", "peft", "0", "plain PEFT + bitsandbytes loop")
"""The PEFT training loop, served by gpu_baselines.py like a baseline ('run train'); not in BASELINES: it does not generate."""


# ---------------------------------------------------------------- clock, record


class Clock:
    """Elapsed time, the budget's deadline and progress lines."""

    def __init__(self, budget: float) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + budget

    def elapsed(self) -> float:
        """Seconds since the program started."""
        return time.monotonic() - self.started

    def left(self) -> float:
        """Seconds until the deadline."""
        return self.deadline - time.monotonic()

    def fits(self, seconds: float) -> bool:
        """Whether ``seconds`` more work still leaves RESERVE_SECONDS before the deadline."""
        return self.left() - RESERVE_SECONDS >= seconds

    def log(self, message: str) -> None:
        """One progress line with the elapsed time."""
        print(f"[{self.elapsed():6.1f} s] {message}", flush=True)


class Record:
    """The JSON record and its plot; ``save`` recomputes the figures, so a record cut short still has what was measured."""

    def __init__(self, path: Path, data: dict, title: str, part: str) -> None:
        self.path = path
        self.data = data
        self.title = title
        self.phases: dict = data["parts"][part].setdefault("phases", {})
        """This part's phases: their start, time and status."""

    @property
    def plot_path(self) -> Path:
        """The PNG beside the JSON."""
        return self.path.with_suffix(".png")

    def save(self, with_plot: bool = False) -> None:
        """Write the record with its current figures and verdicts (and redraw the plot)."""
        self.data["results"] = figures(self.data)
        self.data["targets"] = verdicts(self.data["results"])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=2) + "\n")
        if with_plot:
            plot(self.data, self.plot_path, self.title)

    @contextlib.contextmanager
    def phase(self, name: str, clock: Clock) -> Iterator[dict]:
        """Run one phase: its time and status (an error is recorded, and the program goes on), then save."""
        clock.log(f"phase {name} ...")
        entry = self.phases[name] = {"started_at_s": round(clock.elapsed(), 1), "status": "running"}
        started = time.monotonic()
        try:
            yield entry
            if entry["status"] == "running":
                entry["status"] = "ok"
        except Exception as error:  # noqa: BLE001 - a failed phase is recorded; later phases still run
            entry["status"] = "failed"
            entry["error"] = scrub(f"{type(error).__name__}: {error}")
            clock.log(f"phase {name} FAILED: {entry['error'][-400:]}")
        finally:
            entry["seconds"] = round(time.monotonic() - started, 1)
            self.save(with_plot=True)
            clock.log(f"phase {name}: {entry['status']} in {entry['seconds']} s")


def scrub(text: str, limit: int = 2000) -> str:
    """The end of ``text`` with directories taken out of paths (a record names no path of the machine it ran on)."""
    return re.sub(r"(?<![\w.])/(?:[\w.+-]+/)+", ".../", text)[-limit:]


# ---------------------------------------------------------------- GPU memory (nvidia-smi)


def nvidia_smi(query: str, what: str = "gpu") -> list[list[str]]:
    """``nvidia-smi --query-<what>=<query>`` on GPU 0, as rows of fields."""
    command = ["nvidia-smi", "-i", "0", f"--query-{what}={query}", "--format=csv,noheader,nounits"]
    output = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True).stdout
    return [[field.strip() for field in line.split(",")] for line in output.splitlines() if line.strip()]


def device_used_mib() -> int:
    """GPU memory in use, all processes."""
    return int(nvidia_smi("memory.used")[0][0])


def process_tree(root: int) -> set[int]:
    """``root`` and its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    tree, pending = set(), [root]
    while pending:
        pid = pending.pop()
        tree.add(pid)
        pending.extend(children.get(pid, []))
    return tree


def tree_memory(root: int, reference_mib: int) -> dict:
    """GPU memory of ``root``'s processes: nvidia-smi's per-process figures, or, where it lists
    none of them (another PID namespace), the device-wide reading above ``reference_mib``."""
    used = device_used_mib()
    tree = process_tree(root)
    rows = nvidia_smi("pid,used_memory", "compute-apps")
    per_process = {int(pid): int(mib) for pid, mib in rows if pid.isdigit() and mib.isdigit() and int(pid) in tree}
    if per_process:
        return {"mib": sum(per_process.values()), "method": "per-process", "per_process_mib": per_process, "device_used_mib": used}
    return {"mib": used - reference_mib, "method": "device-wide", "device_used_mib": used, "reference_mib": reference_mib}


def wait_gpu_released(used_before_mib: int, released_mib: int, clock: Clock, timeout: float = 30.0) -> None:
    """After stopping processes that held ``released_mib``, wait until most of it is free again (the driver takes a moment)."""
    at_most = used_before_mib - int(0.8 * released_mib)
    deadline = time.monotonic() + timeout
    while (used := device_used_mib()) > at_most and time.monotonic() < deadline:
        time.sleep(0.5)
    if used > at_most:
        clock.log(f"GPU memory still {used} MiB {timeout:.0f} s after a stop (expected at most {at_most})")


# ---------------------------------------------------------------- Tandem through gRPC


def child_environment(compile_cache: Path) -> dict[str, str]:
    """What the server and the baselines run with beyond this process's environment."""
    path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {
        "PYTHONPATH": os.pathsep.join(path + [p for p in SOURCE_PATHS if p not in path]),
        "PYTHONUNBUFFERED": "1",
        "VLLM_CACHE_ROOT": str(compile_cache),  # vLLM keeps inductor's and triton's caches under it too
    }


def start_tandem(cache_dir: Path, logs: Path, env: dict[str, str]) -> ServerProcess:
    """A fresh ``python -m service --model none``."""
    return start_server(cache_dir, logs, "--model", "none", wait_ready=False, env=env)


def stop_tandem(server: ServerProcess, clock: Clock) -> None:
    """Stop the server; its engine process too, by id, should it outlive it (and still run the same command)."""
    children = {pid: command_line(pid) for pid in process_tree(server.process.pid) - {server.process.pid}}
    server.stop()
    for pid, command in sorted(children.items()):
        if command and command_line(pid) == command:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                clock.log(f"killed the server's leftover process {pid}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process has used so far, all its threads (0 once it has gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def command_line(pid: int) -> bytes:
    """A process's command line (empty once it has gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def load_model(server: ServerProcess, timeout: float) -> dict:
    """LoadModel with the benchmark's request: wall seconds, the server's own figure, each progress event's
    time, vLLM's own start-up timings from the server's log, and GetModel's memory."""
    with grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
        stub = tandem_pb2_grpc.TandemServiceStub(channel)
        started = time.perf_counter()
        events = list(stub.LoadModel(load_request(), timeout=timeout))
        seconds = time.perf_counter() - started
    info = events[-1].model
    progress = [
        {"phase": pb.LoadPhase.Name(e.progress.phase), "message": e.progress.message[:120], "elapsed_s": round(e.progress.elapsed_seconds, 2)}
        for e in events
        if e.HasField("progress")
    ]
    return {
        "seconds": seconds,
        "server_seconds": info.load_seconds,
        "engine": pb.EngineKind.Name(info.engine),
        "progress": progress,
        "engine_log": engine_log_timings(server.log_path.read_text(errors="replace")),
        "memory": model_memory(server),
    }


ENGINE_LOG_TIMINGS = {
    "model_loading_s": re.compile(r"Model loading took [\d.]+ GiB(?: memory)? and ([\d.]+) seconds"),
    "graph_capture_s": re.compile(r"Graph capturing finished in ([\d.]+) secs"),
    "init_engine_s": re.compile(r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) s"),
    "compilation_s": re.compile(r"init engine .* took [\d.]+ s(?:econds)? \(compilation: ([\d.]+) s"),
    "memory_profiling_s": re.compile(r"Memory profiling takes ([\d.]+) seconds"),
}
"""vLLM's own start-up timings, read from the last engine start in a server's log."""


def engine_log_timings(log: str) -> dict[str, float]:
    """The last value of each ENGINE_LOG_TIMINGS line in ``log``."""
    found = {}
    for name, pattern in ENGINE_LOG_TIMINGS.items():
        values = pattern.findall(log)
        if values:
            found[name] = float(values[-1])
    return found


def model_memory(server: ServerProcess) -> dict:
    """GetModel's memory accounting."""
    with grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
        memory = tandem_pb2_grpc.TandemServiceStub(channel).GetModel(pb.GetModelRequest(), timeout=60).model.memory
    return {f.name: getattr(memory, f.name) for f in memory.DESCRIPTOR.fields}


def train_steps(server: ServerProcess, steps: int) -> Iterator[dict]:
    """``steps`` TrainSteps on the benchmark batch, all on one channel, each yielded as it returns (the caller
    may run something between two): wall seconds, tokens, outcome and the reply's phase seconds."""
    request = pb.TrainStepRequest(
        sequences=[pb.TrainSequence(token_ids=ids) for ids in train_batch()], optimizer=pb.OptimizerConfig(learning_rate=LEARNING_RATE)
    )
    with grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
        stub = tandem_pb2_grpc.TandemServiceStub(channel)
        for _ in range(steps):
            started = time.perf_counter()
            reply = stub.TrainStep(request, timeout=RUN_TIMEOUT_SECONDS)
            yield {
                "wall_seconds": time.perf_counter() - started,
                "tokens": reply.tokens,
                "outcome": pb.StepOutcome.Name(reply.outcome),
                "loss": reply.loss,
                "seconds": {f.name: getattr(reply.seconds, f.name) for f in reply.seconds.DESCRIPTOR.fields},
            }


async def _generate(address: str, mode: str) -> dict:
    """The run itself: every request at once on one channel, timed from the first call to the last reply."""
    sampling = pb.SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True, temperature=TEMPERATURE)
    prompts = [pb.Prompt(token_ids=pb.TokenIds(ids=ids)) for ids in prompt_ids(PROMPTS, PROMPT_TOKENS)]
    groups = [prompts] if mode == "one_rpc" else [[prompt] for prompt in prompts]
    requests = [pb.GenerateRequest(prompts=group, sampling=sampling, token_ids_only=mode == "ids", whole_samples=mode != "stream") for group in groups]
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        stub = tandem_pb2_grpc.TandemServiceStub(channel)

        first: dict[tuple[int, int], float] = {}
        last: dict[tuple[int, int], float] = {}

        async def call(number: int, request: pb.GenerateRequest) -> tuple[int, int]:
            tokens = chars = 0
            async for reply in stub.Generate(request, timeout=RUN_TIMEOUT_SECONDS):
                sample = (number, reply.prompt_index)
                last[sample] = time.perf_counter() - started
                first.setdefault(sample, last[sample])
                tokens += len(reply.token_ids)
                chars += len(reply.text)
            return tokens, chars

        started = time.perf_counter()
        counts = await asyncio.gather(*(call(number, request) for number, request in enumerate(requests)))
        seconds = time.perf_counter() - started
    tokens = sum(c[0] for c in counts)
    return {
        "mode": mode,
        "tokens": tokens,
        "text_chars": sum(c[1] for c in counts),
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "replies": reply_spread(list(first.values()), list(last.values())),
    }


def tandem_generate(server: ServerProcess, mode: str) -> dict:
    """One full-size Generate run of ``mode`` (TANDEM_MODES) through gRPC, timed on this side, with how busy
    each process's CPU was meanwhile (1.0: one core all the time): a front process near 1.0 limits the rate."""
    front = server.process.pid
    pids = process_tree(front)
    before = {pid: cpu_seconds(pid) for pid in pids}
    client_before = time.process_time()
    result = asyncio.run(_generate(server.address, mode))
    client_cpu = time.process_time() - client_before
    used = {pid: cpu_seconds(pid) - before[pid] for pid in pids}
    result["cpu_busy"] = {
        "server_front": round(used[front] / result["seconds"], 2),
        "engine_processes": round(sum(v for pid, v in used.items() if pid != front) / result["seconds"], 2),
        "bench_client": round(client_cpu / result["seconds"], 2),
    }
    check_tokens("Tandem", result)
    if (mode == "ids") != (result["text_chars"] == 0):  # recorded, not fatal: the timing still stands
        result["wrong_text"] = f"{result['text_chars']} characters of text came back"
        print(f"Tandem {mode}: {result['wrong_text']}", flush=True)
    return result


def check_tokens(side: str, result: dict) -> None:
    """Every run generates every token."""
    if result["tokens"] != PROMPTS * NEW_TOKENS:
        raise RuntimeError(f"{side} {result['mode']}: {result['tokens']} tokens, expected {PROMPTS * NEW_TOKENS}")


# ---------------------------------------------------------------- baselines (gpu_baselines.py processes)


class BaselineProcess:
    """A ``gpu_baselines.py serve`` process (a vLLM baseline, or the PEFT loop): its line protocol on stdin/stdout,
    its log on stderr."""

    def __init__(self, baseline: Baseline, cache_dir: Path, adapter_dir: Path, logs: Path, env: dict[str, str]) -> None:
        self.baseline = baseline
        self.log_path = logs / f"baseline-{baseline.name}.log"
        argv = [sys.executable, str(REPO / "tests/bench/gpu_baselines.py"), "serve", "--engine", baseline.engine]
        argv += ["--cache-dir", str(cache_dir), "--adapter-dir", str(adapter_dir), *baseline.options]
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                argv,
                cwd=REPO,
                env={**os.environ, **env, "VLLM_ENABLE_V1_MULTIPROCESSING": baseline.multiprocessing},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                start_new_session=True,  # its own process group: stop() ends the engine core with it
            )
        self.gpu: dict = {"mib": 0}
        """Its GPU memory once up (``tree_memory``)."""
        self._messages: queue.Queue[dict | None] = queue.Queue()
        threading.Thread(target=self._read, name=f"read-{baseline.name}", daemon=True).start()

    def _read(self) -> None:
        """Hand each protocol line to ``_next`` (a reader thread, so the pipe never fills); None at its end."""
        for line in self.process.stdout:
            with contextlib.suppress(ValueError):  # only protocol lines are expected; skip anything else
                self._messages.put(json.loads(line))
        self._messages.put(None)

    def _next(self, timeout: float) -> dict:
        """The next protocol message; an error naming the log's end when the process has gone."""
        try:
            message = self._messages.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self.baseline.name}: no answer within {timeout:.0f} s") from None
        if message is None:
            log_tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"{self.baseline.name} closed its output (exit status {self.process.poll()}):\n{log_tail}")
        return message

    def wait_ready(self, timeout: float) -> dict:
        """The ready message (start seconds, process id; a vLLM engine's scheduling, the PEFT loop's warm-up step)."""
        return self._next(timeout)

    def run(self, mode: str) -> dict:
        """One full-size run of ``mode`` (BASELINE_MODES; ``train``: one step of the PEFT loop), timed inside the
        baseline's process; a generation run must have made every token."""
        self.process.stdin.write(f"run {mode}\n")
        self.process.stdin.flush()
        result = self._next(RUN_TIMEOUT_SECONDS)
        if mode in BASELINE_MODES:
            check_tokens(self.baseline.name, result)
        return result

    def stop(self) -> None:
        """Ask it to shut its engine down, then end whatever is left of its process group."""
        if self.process.poll() is None:
            with contextlib.suppress(BrokenPipeError, OSError):
                self.process.stdin.write("quit\n")
                self.process.stdin.flush()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # our own child's group, by id
        self.process.wait()


# ---------------------------------------------------------------- the phases


@dataclass
class Bench:
    """What the phases share."""

    clock: Clock
    record: Record
    cache_dir: Path
    adapter_dir: Path
    logs: Path
    env: dict[str, str]
    idle_mib: int
    runs: int
    steps: int
    part: str
    """Which part of the program runs: ``all``, ``load`` or ``generate`` (see PARTS)."""
    server: ServerProcess | None = None
    up: dict[str, BaselineProcess] = dataclasses.field(default_factory=dict)
    """The baselines running, by name: ``vllm_alone`` starts the first, ``baselines_up`` the others."""
    peft: BaselineProcess | None = None
    """The PEFT loop's process while it is up (``tandem_cold``, ``baselines_adapter``)."""
    start_estimate: float = START_ESTIMATE_SECONDS

    def tandem_cold(self, entry: dict) -> None:
        """Cold LoadModel and memory with nothing else on the GPU; then the PEFT loop starts beside the server
        (it saves the baselines' adapter) and TrainSteps pair with its steps, a TrainStep then a PEFT step.
        The PEFT process stops before the memory after training is read; the server stops."""
        server = start_tandem(self.cache_dir, self.logs, self.env)
        try:
            load = load_model(server, timeout=max(60.0, self.clock.left() - RESERVE_SECONDS))
            load["gpu"] = tree_memory(server.process.pid, self.idle_mib)
            entry.update(load_seconds=load["seconds"], engine=load["engine"])
            self.record.data["tandem_cold"] = load
            self.clock.log(f"LoadModel cold {load['seconds']:.1f} s ({load['engine']}); GPU {load['gpu']['mib']} MiB ({load['gpu']['method']})")
            self.record.save()
            try:
                self.start_peft(entry)
                steps = load["train"] = []
                with contextlib.closing(train_steps(server, self.steps)) as tandem_steps:
                    for step in tandem_steps:
                        steps.append(step)
                        peft_seconds = self.peft_step(entry)
                        self.clock.log(
                            f"  TrainStep {len(steps) - 1:2} {step['wall_seconds']:7.3f} s ({step['outcome']})"
                            + ("" if peft_seconds is None else f" | PEFT step {peft_seconds:7.3f} s")
                        )
            finally:
                self.stop_peft()
            load["memory_after_train"] = model_memory(server)
            load["gpu_after_train"] = tree_memory(server.process.pid, self.idle_mib)
            median = statistics.median(s["tokens"] / s["wall_seconds"] for s in steps[1:])
            self.clock.log(f"TrainStep {median:,.0f} tok/s (median of {len(steps) - 1}); sync p50 {statistics.median(s['seconds']['sync'] for s in steps[1:]) * 1000:.2f} ms")
            peft = self.record.data.get("peft", {})
            if peft.get("tokens_per_second_median") is not None:
                paired = len(peft["step_seconds"]) - 1
                self.clock.log(f"PEFT loop {peft['tokens_per_second_median']:,.0f} tok/s (median of {paired}, each step right after a TrainStep)")
        finally:
            used = device_used_mib()
            stop_tandem(server, self.clock)
            wait_gpu_released(used, used - self.idle_mib, self.clock)

    def start_peft(self, entry: dict) -> None:
        """Start the PEFT loop's process (it saves the baselines' adapter and makes one warm-up step before it is
        ready) and record it as ``peft``. Should it fail, that is recorded and the TrainSteps run unpaired."""
        try:
            self.peft, ready = self.launch(PEFT)
        except Exception as error:  # noqa: BLE001 - Tandem's TrainSteps still run
            self.peft_failed(entry, error)
            return
        self.record.data["peft"] = {
            "load_seconds": ready["start_seconds"],
            "process_start_seconds": ready["process_start_seconds"],
            "warmup_step_seconds": ready["warmup_step_seconds"],
            "tokens_per_step": ready["tokens_per_step"],
            "gpu": self.peft.gpu,
            "step_seconds": [],
            "tokens_per_second_median": None,
            "interleaved_with": "tandem_cold TrainSteps",
        }
        entry["peft_start_seconds"] = round(ready["process_start_seconds"], 1)
        self.clock.log(
            f"PEFT loop up in {ready['process_start_seconds']:.1f} s (model {ready['start_seconds']:.1f} s, warm-up step "
            f"{ready['warmup_step_seconds']:.2f} s); GPU {self.peft.gpu['mib']} MiB ({self.peft.gpu['method']})"
        )

    def peft_step(self, entry: dict) -> float | None:
        """One step of the PEFT loop, when it is up: its seconds, recorded with the median of every step but the
        first. Should it fail, that is recorded, the process stops and the TrainSteps go on unpaired."""
        if self.peft is None:
            return None
        try:
            result = self.peft.run("train")
        except Exception as error:  # noqa: BLE001 - Tandem's TrainSteps still run
            self.stop_peft()
            self.peft_failed(entry, error)
            return None
        peft = self.record.data["peft"]
        peft["step_seconds"].append(result["seconds"])
        timed = peft["step_seconds"][1:]
        peft["tokens_per_second_median"] = statistics.median(peft["tokens_per_step"] / s for s in timed) if timed else None
        return result["seconds"]

    def peft_failed(self, entry: dict, error: Exception) -> None:
        """Record that the PEFT loop failed (in the phase's entry and the record's ``peft``)."""
        message = scrub(f"{type(error).__name__}: {error}")
        entry["peft_error"] = message
        entry["status"] = "partial: the PEFT loop failed (peft_error); the TrainSteps ran on"
        self.record.data.setdefault("peft", {})["error"] = message
        self.clock.log(f"PEFT loop FAILED: {message[-400:]}")

    def stop_peft(self) -> None:
        """Stop the PEFT loop's process, when one is up, and wait for its GPU memory."""
        if self.peft is None:
            return
        process, self.peft = self.peft, None
        used = device_used_mib()
        process.stop()
        wait_gpu_released(used, process.gpu["mib"], self.clock)

    def baselines_adapter(self, entry: dict) -> None:
        """The adapter the vLLM baselines serve: ``tandem_cold``'s PEFT process saves it. Where it is missing (part
        ``generate`` on a new --work, or the PEFT process failed), a PEFT process starts only to save it, and stops."""
        if (self.adapter_dir / "adapter_config.json").exists():
            entry["status"] = "skipped: the baselines' adapter is there"
            return
        try:
            self.peft, ready = self.launch(PEFT)
        finally:
            self.stop_peft()
        entry["peft_start_seconds"] = round(ready["process_start_seconds"], 1)
        self.clock.log(f"the baselines' adapter saved by a PEFT process ({ready['process_start_seconds']:.1f} s)")

    def vllm_alone(self, entry: dict) -> None:
        """The first baseline on the GPU alone: vLLM's memory with the same settings; it stays up."""
        alone = self.up[BASELINES[0].name] = self.start_baseline(BASELINES[0], entry)
        self.record.data["vllm_alone"] = {"baseline": BASELINES[0].name, "gpu": alone.gpu}
        self.clock.log(f"vLLM alone ({BASELINES[0].name}): GPU {alone.gpu['mib']} MiB ({alone.gpu['method']})")

    def tandem_warm(self, entry: dict) -> None:
        """A second server on the same compile cache: warm LoadModel (``tandem_warm``), then LoadModel again on it
        (``tandem_reload``); it stays up to generate (part ``all``) or stops (part ``load``)."""
        self.start_serving("tandem_warm", entry, warm_up=self.part == "all", reload=True)
        if self.part == "load":
            self.stop_serving()

    def tandem_serving(self, entry: dict) -> None:
        """Part ``generate``: a server for the interleaved phases, its LoadModel recorded as ``tandem_serving``."""
        self.start_serving("tandem_serving", entry, warm_up=True)

    def start_serving(self, key: str, entry: dict, warm_up: bool, reload: bool = False) -> None:
        """Start a server and load the model (recorded under ``key``); with ``reload``, load it once more on the
        same server (``reload_model``); then one full-size warm-up run of each kind."""
        before = device_used_mib()
        server = start_tandem(self.cache_dir, self.logs, self.env)
        try:
            load = load_model(server, timeout=max(60.0, self.clock.left() - RESERVE_SECONDS))
        except BaseException:
            stop_tandem(server, self.clock)
            raise
        self.server = server
        load["gpu"] = tree_memory(server.process.pid, before)
        entry.update(load_seconds=load["seconds"])
        self.record.data[key] = load
        self.clock.log(f"LoadModel ({key}) {load['seconds']:.1f} s; vLLM: {load['engine_log']}")
        self.record.save()
        if reload:
            self.reload_model(before, load["seconds"], entry)
        for mode in TANDEM_MODES if warm_up else ():
            warmup = {**tandem_generate(self.server, mode), "at_s": round(self.clock.elapsed(), 1)}
            self.record.data["tandem"]["warmup"].append(warmup)
            self.clock.log(f"Tandem warm-up {mode}: {warmup['tokens_per_second']:,.0f} tok/s")

    def reload_model(self, before_mib: int, estimate: float, entry: dict) -> None:
        """LoadModel again on the running server, recorded as ``tandem_reload``: LoadModel on a loaded server
        replaces the model (its engine stops, a new one starts). ``self.server`` stays the same process; its
        memory is read again against ``before_mib``, the device's use before it started. Informational: skipped
        when ``estimate`` seconds (the load before) would not fit the budget, and a failure is recorded, not raised."""
        if not self.clock.fits(estimate + STOP_SECONDS):
            entry["reload"] = "skipped: out of time"
            self.clock.log("LoadModel (reload) skipped: out of time")
            return
        try:
            load = load_model(self.server, timeout=max(60.0, self.clock.left() - RESERVE_SECONDS))
            load["gpu"] = tree_memory(self.server.process.pid, before_mib)
        except Exception as error:  # noqa: BLE001 - the reload is informational; the phase goes on
            message = scrub(f"{type(error).__name__}: {error}")
            entry["reload_error"] = message
            entry["status"] = "partial: the reload failed (reload_error)"
            self.record.data["tandem_reload"] = {"error": message}
            self.clock.log(f"LoadModel (reload) FAILED: {message[-400:]}")
            return
        entry["reload_seconds"] = load["seconds"]
        self.record.data["tandem_reload"] = load
        self.clock.log(f"LoadModel (reload on the same server) {load['seconds']:.1f} s; vLLM: {load['engine_log']}")
        self.record.save()

    def stop_serving(self) -> None:
        """Stop the server started by ``start_serving`` and wait for its GPU memory."""
        if self.server is not None:
            used = device_used_mib()
            server_mib = tree_memory(self.server.process.pid, self.idle_mib)["mib"]  # a baseline may stay up beside it
            stop_tandem(self.server, self.clock)
            self.server = None
            wait_gpu_released(used, server_mib, self.clock)

    def launch(self, baseline: Baseline) -> tuple[BaselineProcess, dict]:
        """Start a gpu_baselines.py process (never while another engine starts), wait for its ready message (with
        ``process_start_seconds`` added) and note its GPU memory; it is stopped again should that fail."""
        started = time.monotonic()
        before = device_used_mib()
        process = BaselineProcess(baseline, self.cache_dir, self.adapter_dir, self.logs, self.env)
        try:
            ready = process.wait_ready(timeout=max(60.0, self.clock.left() - RESERVE_SECONDS))
            ready["process_start_seconds"] = time.monotonic() - started
            process.gpu = tree_memory(process.process.pid, before)
        except BaseException:
            process.stop()
            raise
        return process, ready

    def start_baseline(self, baseline: Baseline, entry: dict) -> BaselineProcess:
        """Start a baseline engine, wait for it, note its GPU memory."""
        process, ready = self.launch(baseline)
        self.start_estimate = ready["process_start_seconds"]
        side = self.record.data["baselines"][baseline.name]
        side.update(ready=ready, gpu=process.gpu)
        entry.setdefault("start_seconds", {})[baseline.name] = round(ready["process_start_seconds"], 1)
        self.clock.log(
            f"{baseline.name} up in {ready['process_start_seconds']:.1f} s (engine {ready['start_seconds']:.1f} s; "
            f"async scheduling {ready['async_scheduling']}, max_num_batched_tokens {ready['max_num_batched_tokens']})"
        )
        return process

    def baselines_up(self, entry: dict) -> None:
        """Start every baseline that is not up yet, one after another, each beside Tandem's server and the
        baselines already up, with one full-size warm-up run (text: it fills the prefix cache)."""
        if self.server is None:
            raise RuntimeError("no Tandem server is up (see phase tandem_warm)")
        for baseline in BASELINES:
            if baseline.name not in self.up:
                if not self.clock.fits(self.start_estimate + self.round_estimate(len(self.up) + 1)):
                    entry.setdefault("skipped", []).append(f"{baseline.name}: out of time")
                    continue
                self.up[baseline.name] = self.start_baseline(baseline, entry)
            side = self.record.data["baselines"][baseline.name]
            side["warmup"].append({**self.up[baseline.name].run("text"), "at_s": round(self.clock.elapsed(), 1)})

    def interleave(self, entry: dict) -> None:
        """Rounds of pairs with every baseline up at once: in each round, for each baseline mode, each baseline
        (in an order rotated from round to round) runs right after a Tandem run, whose modes cycle through
        TANDEM_MODES. Every side's runs then span the same minutes, so the machine's drift reaches all alike.
        Rounds stop early when the next pair would not leave time to stop everything."""
        if self.server is None:
            raise RuntimeError("no Tandem server is up (see phase tandem_warm)")
        processes = [self.up[b.name] for b in BASELINES if b.name in self.up]
        if not processes:
            raise RuntimeError("no baseline is up (see phase baselines_up)")
        tandem_modes = itertools.cycle(TANDEM_MODES)
        ends = time.monotonic() + self.clock.left() - RESERVE_SECONDS - STOP_SECONDS * len(processes)
        pairs = 0
        for round_index in range(self.runs):
            turn = round_index % len(processes)
            order = processes[turn:] + processes[:turn]
            for baseline_mode, process in itertools.product(BASELINE_MODES, order):
                if pairs and time.monotonic() + 2 * self.run_estimate() > ends:
                    entry["pairs_cut_to"] = pairs
                    self.clock.log(f"{pairs} of {self.runs * len(BASELINE_MODES) * len(processes)} pairs of runs: the time budget")
                    return
                self.pair(process, next(tandem_modes), baseline_mode)
                pairs += 1
        entry["pairs"] = pairs

    def pair(self, process: BaselineProcess, tandem_mode: str, baseline_mode: str) -> None:
        """One Tandem run, then one run of ``process``; both recorded (Tandem's run names its pair's baseline)."""
        name = process.baseline.name
        tandem = {**tandem_generate(self.server, tandem_mode), "phase": name, "at_s": round(self.clock.elapsed(), 1)}
        self.record.data["tandem"]["runs"].append(tandem)
        other = {**process.run(baseline_mode), "at_s": round(self.clock.elapsed(), 1)}
        self.record.data["baselines"][name]["runs"].append(other)
        self.clock.log(
            f"  Tandem {tandem_mode:7} {tandem['tokens_per_second']:8,.0f} tok/s (CPU {tandem['cpu_busy']}) | "
            f"{name} {baseline_mode:4} {other['tokens_per_second']:8,.0f} tok/s"
        )
        self.record.save()

    def run_estimate(self) -> float:
        """Mean seconds of the last four full-size runs, plus a little (a guess before the first)."""
        runs = self.record.data["tandem"]["warmup"] + self.record.data["tandem"]["runs"]
        for side in self.record.data["baselines"].values():
            runs += side["warmup"] + side["runs"]
        recent = [r["seconds"] for r in sorted(runs, key=lambda r: r["at_s"])[-4:]]
        return (statistics.mean(recent) if recent else 10.0) + 0.3

    def round_estimate(self, baselines: int) -> float:
        """The least worth starting another baseline for: its warm-up, one round of pairs with ``baselines``
        baselines, and stopping them."""
        return (1 + 2 * len(BASELINE_MODES) * baselines) * self.run_estimate() + STOP_SECONDS * baselines

    def close(self) -> None:
        """Stop whatever is still up."""
        if self.peft is not None:
            self.peft.stop()
            self.peft = None
        for process in self.up.values():
            process.stop()
        self.up.clear()
        if self.server is not None:
            stop_tandem(self.server, self.clock)
            self.server = None


# ---------------------------------------------------------------- figures


def median_rate(runs: list[dict], mode: str) -> float | None:
    """Median tokens/s of the runs of ``mode``."""
    rates = [r["tokens_per_second"] for r in runs if r["mode"] == mode]
    return statistics.median(rates) if rates else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator`` when both are known."""
    return numerator / denominator if numerator is not None and denominator else None


def fastest(data: dict, mode: str) -> tuple[str | None, float | None]:
    """The baseline with the highest median of ``mode``, and that median."""
    medians = {name: median_rate(side["runs"], mode) for name, side in data["baselines"].items()}
    known = {name: rate for name, rate in medians.items() if rate is not None}
    if not known:
        return None, None
    name = max(known, key=known.get)
    return name, known[name]


def within_phase(data: dict) -> dict[str, dict[str, float | None]]:
    """Per baseline: Tandem's medians from the runs paired with it (each right before one of its runs) ÷ that
    baseline's medians (text and one RPC against its text runs, token ids against its detokenize-off runs),
    and how many runs each side made. Records before the fifth H200 run paired them in phases, one baseline
    after another, and the machine's state drifted between phases (BENCHMARKS.md, fourth H200 run)."""
    ratios = {}
    for name, side in data["baselines"].items():
        tandem = [r for r in data["tandem"]["runs"] if r.get("phase") == name]
        text, ids = median_rate(side["runs"], "text"), median_rate(side["runs"], "ids")
        ratios[name] = {
            "text": ratio(median_rate(tandem, "text"), text),
            "ids": ratio(median_rate(tandem, "ids"), ids),
            "one_rpc": ratio(median_rate(tandem, "one_rpc"), text),
            "stream": ratio(median_rate(tandem, "stream"), text),
            "tandem_runs": len(tandem),
            "baseline_runs": len(side["runs"]),
        }
    return ratios


def reply_spread_medians(data: dict) -> dict[str, dict[str, float]]:
    """Per side and mode that timed its samples (Tandem's runs, the AsyncLLM baseline): the median over runs of
    each ``replies`` figure (``gpu_workload.reply_spread``): when the last sample got its first token, when the
    first finished, and so on."""
    sides = {"tandem": data["tandem"]["runs"], **{name: side["runs"] for name, side in data["baselines"].items()}}
    spread = {}
    for side, runs in sides.items():
        for mode in sorted({r["mode"] for r in runs if "replies" in r}):
            timed = [r["replies"] for r in runs if r["mode"] == mode and "replies" in r]
            spread[f"{side}_{mode}"] = {key: statistics.median(t[key] for t in timed) for key in timed[0]}
    return spread


def figures(data: dict) -> dict:
    """The headline figures from what the record holds so far (None where not measured)."""
    tandem_runs = data["tandem"]["runs"]
    text_name, text_rate = fastest(data, "text")
    ids_name, ids_rate = fastest(data, "ids")
    result: dict = {
        "tandem_generate_tokens_per_second": median_rate(tandem_runs, "text"),
        "tandem_generate_ids_tokens_per_second": median_rate(tandem_runs, "ids"),
        "tandem_one_rpc_tokens_per_second": median_rate(tandem_runs, "one_rpc"),
        "tandem_stream_tokens_per_second": median_rate(tandem_runs, "stream"),
    }
    for name, side in data["baselines"].items():
        for mode in BASELINE_MODES:
            result[f"{name}_{mode}_tokens_per_second"] = median_rate(side["runs"], mode)
    result.update(
        fastest_baseline_text=text_name,
        fastest_baseline_ids=ids_name,
        generate_vs_vllm=ratio(result["tandem_generate_tokens_per_second"], text_rate),
        generate_ids_vs_vllm=ratio(result["tandem_generate_ids_tokens_per_second"], ids_rate),
        one_rpc_vs_vllm=ratio(result["tandem_one_rpc_tokens_per_second"], text_rate),
        stream_vs_vllm=ratio(result["tandem_stream_tokens_per_second"], text_rate),  # no target
        within_phase_vs_vllm=within_phase(data),
        reply_spread_ms=reply_spread_medians(data),
        fewest_runs_behind_a_median=min(
            [sum(r["mode"] == mode for r in tandem_runs) for mode in TANDEM_MODES]
            + [sum(r["mode"] == mode for r in side["runs"]) for side in data["baselines"].values() for mode in BASELINE_MODES]
        ),
    )
    cold = data.get("tandem_cold", {})
    first_step = cold.get("train", [])[:1]
    steps = cold.get("train", [])[1:]
    syncs_ms = sorted(s["seconds"]["sync"] * 1000 for s in steps)
    train_rate = statistics.median(s["tokens"] / s["wall_seconds"] for s in steps) if steps else None
    peft = data.get("peft", {})
    peft_rate = peft.get("tokens_per_second_median")
    # each pair after the first: the PEFT step's seconds over the TrainStep's right before it (same batch, same
    # tokens); only where the PEFT steps were paired with the TrainSteps (records before that ran them apart)
    pairs = list(zip(cold.get("train", []), peft.get("step_seconds", []), strict=False))[1:] if peft.get("interleaved_with") else []
    pair_ratios = [peft_seconds / tandem["wall_seconds"] for tandem, peft_seconds in pairs]
    result.update(
        lora_sync_ms_p50=statistics.median(syncs_ms) if syncs_ms else None,
        lora_sync_ms_max=syncs_ms[-1] if syncs_ms else None,
        # TrainStep's wall time on this side minus the reply's seconds.total: gRPC, the barrier, the hop to the engine process
        train_step_outside_total_ms_p50=statistics.median((s["wall_seconds"] - s["seconds"]["total"]) * 1000 for s in steps) if steps else None,
        tandem_train_tokens_per_second=train_rate,
        peft_train_tokens_per_second=peft_rate,
        train_vs_peft=ratio(train_rate, peft_rate),
        train_vs_peft_pairs=statistics.median(pair_ratios) if pair_ratios else None,
        # the warm-up: with --train-compile on, the trainer's layers compile in it
        train_first_step_seconds=first_step[0]["wall_seconds"] if first_step else None,
    )
    memory = cold.get("memory_after_train") or cold.get("memory")
    tandem_mib = cold.get("gpu", {}).get("mib")
    alone_mib = data.get("vllm_alone", {}).get("gpu", {}).get("mib")
    result.update(
        tandem_gib_after_load=tandem_mib / 1024 if tandem_mib is not None else None,
        vllm_alone_gib=alone_mib / 1024 if alone_mib is not None else None,
        extra_gib_vs_vllm_alone=(tandem_mib - alone_mib) / 1024 if tandem_mib is not None and alone_mib is not None else None,
        extra_gib_vs_vllm_alone_after_train=(cold["gpu_after_train"]["mib"] - alone_mib) / 1024 if "gpu_after_train" in cold and alone_mib is not None else None,
        adapter_and_optimizer_gib=(memory["adapter_bytes"] + memory["optimizer_bytes"]) / GIB if memory else None,
        load_seconds_cold=cold.get("seconds"),
        load_seconds_warm=data.get("tandem_warm", {}).get("seconds"),
        # LoadModel on the warm server that already holds the model (tandem_warm's): the engine is replaced
        load_seconds_reload=data.get("tandem_reload", {}).get("seconds"),
    )
    return result


def verdicts(results: dict) -> dict:
    """Each target: the figure, the bound and whether it is met (None until measured)."""
    verdict = {}
    for key, bound in RATIO_TARGETS.items():
        figure = results[key]
        verdict[key] = {"figure": figure, "target": f">= {bound}", "met": None if figure is None else figure >= bound}
    for key, bound in UPPER_BOUNDS.items():
        figure = results[key]
        verdict[key] = {"figure": figure, "target": f"<= {bound}", "met": None if figure is None else figure <= bound}
    extra, adapter = results["extra_gib_vs_vllm_alone"], results["adapter_and_optimizer_gib"]
    bound = None if adapter is None else adapter + MEMORY_SLACK_GIB
    verdict["extra_gib_vs_vllm_alone"] = {
        "figure": extra,
        "target": "<= adapter_and_optimizer_gib + 0.25" + ("" if bound is None else f" = {bound:.3f}"),
        "met": None if extra is None or bound is None else extra <= bound,
    }
    return verdict


# ---------------------------------------------------------------- output


def print_table(data: dict) -> None:
    """The targets, then every side's medians."""
    print(f"\n{'target':34} {'figure':>12}  {'bound':42} verdict")
    for key, verdict in data["targets"].items():
        figure = "-" if verdict["figure"] is None else f"{verdict['figure']:,.3f}"
        met = {True: "met", False: "MISSED", None: "not measured"}[verdict["met"]]
        print(f"{key:34} {figure:>12}  {verdict['target']:42} {met}")
    print(f"\n{'generation':54} {'median':>9}  runs")
    for label, runs, mode in generation_rows(data):
        rates = [r["tokens_per_second"] for r in runs if r["mode"] == mode]
        median = f"{statistics.median(rates):9,.0f}" if rates else f"{'-':>9}"
        print(f"{label:54} {median}  {len(rates)}")
    results = data["results"]
    print(f"\n{'Tandem paired with each baseline, ÷ that baseline':54} {'text':>6} {'ids':>6} {'one RPC':>8} {'stream':>7}")
    for name, ratios in results["within_phase_vs_vllm"].items():
        cells = ["-" if ratios[k] is None else f"{ratios[k]:.2f}" for k in ("text", "ids", "one_rpc", "stream")]
        print(f"{name:54} {cells[0]:>6} {cells[1]:>6} {cells[2]:>8} {cells[3]:>7}")
    if results["fewest_runs_behind_a_median"] < RUNS:
        print(f"\nnote: a median above rests on {results['fewest_runs_behind_a_median']} runs (fewer than {RUNS}: --quick, the time budget or a failed phase)")
    extra = ("stream_vs_vllm", "tandem_train_tokens_per_second", "peft_train_tokens_per_second", "train_vs_peft_pairs", "train_first_step_seconds", "load_seconds_reload")
    for key in extra + ("tandem_gib_after_load", "vllm_alone_gib", "lora_sync_ms_max"):
        value = results[key]
        print(f"{key:54} {'-' if value is None else f'{value:,.2f}':>9}")


def generation_rows(data: dict) -> list[tuple[str, list[dict], str]]:
    """(label, runs, mode) for every generation figure: Tandem's four kinds, then each baseline's two modes."""
    tandem = data["tandem"]["runs"]
    rows = [
        (f"Tandem, {PROMPTS} Generate RPCs, text", tandem, "text"),
        (f"Tandem, {PROMPTS} Generate RPCs, token ids only", tandem, "ids"),
        (f"Tandem, one Generate RPC of {PROMPTS} prompts", tandem, "one_rpc"),
        (f"Tandem, {PROMPTS} Generate RPCs, text streamed", tandem, "stream"),
    ]
    for baseline in BASELINES:
        runs = data["baselines"][baseline.name]["runs"]
        rows.append((f"{baseline.label}, text", runs, "text"))
        rows.append((f"{baseline.label}, detokenize off", runs, "ids"))
    return rows


def plot(data: dict, path: Path, title: str) -> None:
    """Generation tokens/s (median bar, every run a dot), the ratio targets, LoadModel seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (generation, ratios, loads) = plt.subplots(1, 3, figsize=(17, 5.5), gridspec_kw={"width_ratios": [2.4, 1.2, 0.8]})
    rows = generation_rows(data)
    for y, (label, runs, mode) in enumerate(rows):
        rates = [r["tokens_per_second"] for r in runs if r["mode"] == mode]
        color = "#2a7" if label.startswith("Tandem") else "#47c"
        if rates:
            generation.barh(y, statistics.median(rates), color=color, alpha=0.45 if mode == "ids" else 0.8)
            generation.scatter(rates, [y] * len(rates), color="k", s=10, zorder=3)
            generation.text(max(rates), y, f"  {statistics.median(rates):,.0f}", va="center", fontsize=8)
    generation.set_yticks(range(len(rows)), [label for label, _, _ in rows], fontsize=8)
    generation.invert_yaxis()
    generation.set_xlabel("generated tokens / s (bar: median; dots: runs)")
    generation.set_title(f"{PROMPTS} prompts x {PROMPT_TOKENS} in / {NEW_TOKENS} out, LoRA r{LORA_RANK}", fontsize=10)

    results, keys = data["results"], list(RATIO_TARGETS)
    values = [results[k] or 0.0 for k in keys]
    ratios.bar(range(len(keys)), values, color=["#2a7" if data["targets"][k]["met"] else "#c54" for k in keys])
    for x, key in enumerate(keys):
        ratios.hlines(RATIO_TARGETS[key], x - 0.4, x + 0.4, colors="k", linestyles="--")
        ratios.text(x, values[x], f"{values[x]:.2f}", ha="center", va="bottom", fontsize=8)
    ratios.set_xticks(range(len(keys)), [k.replace("_vs_", "\nvs ") for k in keys], fontsize=8)
    ratios.set_title("ratios (dashed: target)", fontsize=10)

    seconds = [results["load_seconds_cold"] or 0.0, results["load_seconds_warm"] or 0.0]
    loads.bar([0, 1], seconds, color=["#2a7" if data["targets"][k]["met"] else "#c54" for k in ("load_seconds_cold", "load_seconds_warm")])
    for x, key in enumerate(("load_seconds_cold", "load_seconds_warm")):
        loads.hlines(UPPER_BOUNDS[key], x - 0.4, x + 0.4, colors="k", linestyles="--")
        loads.text(x, seconds[x], f"{seconds[x]:.1f}", ha="center", va="bottom", fontsize=8)
    loads.set_xticks([0, 1], ["cold", "warm"])
    loads.set_title("LoadModel seconds (dashed: target)", fontsize=10)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def versions() -> dict:
    """Package versions (None where one is not installed)."""
    result = {"python": sys.version.split()[0]}
    for name in ("torch", "vllm", "transformers", "peft", "bitsandbytes", "grpcio", "protobuf", "triton"):
        try:
            result[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            result[name] = None
    return result


def bytecode_compiled(packages: tuple[str, ...] = ("torch", "vllm", "transformers")) -> dict[str, float | None]:
    """Per package: the share of its modules that have this interpreter's bytecode (``__pycache__``) on disk.

    An image built with pip has it (pip compiles what it installs); the GPU kit installs with ``--no-compile``,
    and then the first process that imports a module compiles it, which a cold LoadModel would pay for."""
    shares: dict[str, float | None] = {}
    tag = sys.implementation.cache_tag
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            shares[name] = None
            continue
        sources = [p for root in spec.submodule_search_locations for p in Path(root).rglob("*.py")]
        compiled = sum((p.parent / "__pycache__" / f"{p.stem}.{tag}.pyc").exists() for p in sources)
        shares[name] = round(compiled / len(sources), 3) if sources else None
    return shares


def commit() -> str | None:
    """The checkout's commit (with ``-dirty`` for local changes), when it is a git checkout."""
    try:
        described = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return described.stdout.strip()


def settings(args: argparse.Namespace, runs: int, steps: int) -> dict:
    """What was measured, and how."""
    spec = load_spec()
    sizes = [s for s in OPTIONS.cuda_graph_batch_sizes if s <= OPTIONS.max_num_seqs]
    return {
        "model": MODEL,
        "load_in_4bit": spec.load_in_4bit,
        "lora_rank": LORA_RANK,
        "lora_alpha": LORA_ALPHA,
        "lora_targets": list(spec.lora.target_modules),
        "engine_max_lora_rank": engine_lora_rank(spec.max_lora_rank),
        "gpu_memory_utilization": GPU_MEMORY_UTILIZATION,
        "max_num_seqs": OPTIONS.max_num_seqs,
        "cudagraph_capture_sizes": sizes,
        "tandem_engine_compile": args.engine_compile,
        "tandem_train_compile": args.train_compile,
        "tandem_compilation_config": compilation_config(sizes, dataclasses.replace(OPTIONS, torch_compile=args.engine_compile == "on")),
        "baseline_compilation_config": compilation_config(sizes, BASELINE_OPTIONS),
        "prompts": PROMPTS,
        "prompt_tokens": PROMPT_TOKENS,
        "new_tokens": NEW_TOKENS,
        "ignore_eos": True,
        "temperature": TEMPERATURE,
        "train_batch": f"{TRAIN_SEQUENCES} x {TRAIN_SEQUENCE_TOKENS} token ids",
        "train_steps": steps,
        "runs_per_baseline_mode": runs,
        "baselines": {b.name: {"label": b.label, "engine": b.engine, "VLLM_ENABLE_V1_MULTIPROCESSING": b.multiprocessing} for b in BASELINES},
        "quick": args.quick,
        "budget_seconds": args.budget,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n".join(__doc__.splitlines()[4:]))
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_RUNS} runs of each mode instead of {RUNS}, {QUICK_TRAIN_STEPS} train steps instead of {TRAIN_STEPS}")
    parser.add_argument("--out", type=Path, default=REPO / "tests/bench/results", help="where the JSON record and the PNG go (default tests/bench/results)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the 1.1B model is made or found (default: a new temporary directory)")
    parser.add_argument("--logs", type=Path, default=None, help="server and baseline logs (default: a new temporary directory)")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds the whole program may take (default 540)")
    parser.add_argument("--engine-compile", choices=["on", "off"], default="on", help="the server's --engine-compile (default on)")
    parser.add_argument("--train-compile", choices=["on", "off"], default="on", help="the server's --train-compile (default on)")
    parser.add_argument("--part", choices=sorted(PARTS), default="all", help="every phase, or the LoadModel/TrainStep/memory phases, or the Generate phases (see PARTS)")
    parser.add_argument("--work", type=Path, default=None, help="model, adapter, compile cache and logs; kept for the next part (default: a new temporary directory)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The part's phases in order (a failed phase is recorded and the rest still run), then the table; the exit status."""
    args = parse_args(argv)
    clock = Clock(args.budget)
    runs, steps = (QUICK_RUNS, QUICK_TRAIN_STEPS) if args.quick else (RUNS, TRAIN_STEPS)
    work = args.work or Path(tempfile.mkdtemp(prefix="tandem-gpu-bench-"))
    logs = args.logs or work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    cache_dir = args.cache_dir or work / "cache"
    name, driver, total_mib = nvidia_smi("name,driver_version,memory.total")[0]
    date = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    stem = f"{date}-gpu-{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}" + ("-quick" if args.quick else "")
    command = "python tests/bench/gpu_bench.py" + (" --quick" if args.quick else "") + ("" if args.part == "all" else f" --part {args.part}")
    command += "" if args.engine_compile == "on" else " --engine-compile off"
    command += "" if args.train_compile == "on" else " --train-compile off"
    fresh = {
        "date": date,
        "gpu": name,
        "gpu_driver": driver,
        "gpu_total_mib": int(total_mib),
        "command": command,
        "commit": commit(),
        "versions": versions(),
        "bytecode_compiled": {args.part: bytecode_compiled()},
        "settings": settings(args, runs, steps),
        "parts": {},
        "tandem": {"warmup": [], "runs": []},
        "baselines": {b.name: {"label": b.label, "warmup": [], "runs": []} for b in BASELINES},
    }
    path = args.out / f"{stem}.json"
    data = merge_part(json.loads(path.read_text()), fresh, args.part) if args.part != "all" and path.exists() else fresh
    data["parts"][args.part] = {"command": command, "commit": fresh["commit"], "date": date}
    record = Record(path, data, f"Tandem vs vLLM alone: {MODEL}, NF4, {name}", args.part)
    idle_mib = device_used_mib()
    record.data["idle_gpu_mib"] = idle_mib
    clock.log(f"{name}, {int(total_mib):,} MiB, {idle_mib} MiB in use; part {args.part}; work in {work}")
    with record.phase("setup", clock):
        ensure_builtin_model(MODEL, cache_dir)
    env = {**child_environment(work / "compile-cache"), "TANDEM_ENGINE_COMPILE": args.engine_compile, "TANDEM_TRAIN_COMPILE": args.train_compile}
    bench = Bench(clock, record, cache_dir, work / "adapter", logs, env, idle_mib, runs, steps, args.part)
    try:
        for phase in PARTS[args.part]:
            with record.phase(phase, clock) as entry:
                getattr(bench, phase)(entry)
    finally:
        bench.close()
        record.data["parts"][args.part]["total_seconds"] = round(clock.elapsed(), 1)
        record.save(with_plot=True)
    print_table(record.data)
    clock.log(f"wrote {record.path} and {record.plot_path}")
    return 0


PARTS = {
    "all": ("tandem_cold", "baselines_adapter", "vllm_alone", "tandem_warm", "baselines_up", "interleave"),
    "load": ("tandem_cold", "baselines_adapter", "vllm_alone", "tandem_warm"),
    "generate": ("baselines_adapter", "tandem_serving", "baselines_up", "interleave"),
}
"""The phases of each part, after ``setup``. The parts fit one 10-minute call each; run ``load`` then ``generate`` with the same
``--work`` directory, and the second also finds the compile cache warm."""
PART_KEYS = {"load": ("peft", "tandem_cold", "vllm_alone", "tandem_warm", "tandem_reload"), "generate": ("tandem", "baselines", "tandem_serving")}
"""What each part measures in the record; the other part's are kept when a part runs again into the same record."""


def merge_part(existing: dict, fresh: dict, part: str) -> dict:
    """``fresh`` with what the other part measured carried over from the ``existing`` record (same GPU and day)."""
    merged = dict(fresh)
    other = next(name for name in PART_KEYS if name != part)
    for key in PART_KEYS[other]:
        if key in existing:
            merged[key] = existing[key]
    merged["parts"] = {name: value for name, value in existing.get("parts", {}).items() if name == other}
    merged["bytecode_compiled"] = {**existing.get("bytecode_compiled", {}), **fresh.get("bytecode_compiled", {})}
    return merged


if __name__ == "__main__":
    sys.exit(main())
