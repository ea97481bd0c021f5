"""What the server process spends per Generate call, apart from the engine (a CPU diagnostic).

    python tests/bench/front_cost.py [--bursts 10] [--rounds 3] [--hold-ms 0] [--source DIR ...] [--out DIR]

The GPU benchmark (gpu_bench.py) cannot tell the front process's per-call cost from the engine's
step. This program measures it on any machine: the real gRPC server (``service.server.start_server``:
interceptors, servicer, controller) and the real ``VllmHost`` of each source tree, in front of a
stand-in for vLLM's ``AsyncLLM`` that answers each request at once with 256 tokens, in three DELTA
outputs (what vLLM's output processor sends for a 256-token sample at 256 running samples, stream
interval 128) or, for FINAL_ONLY, one. The stand-in is the only part that is not real; without a
GPU there is no vLLM to run. The text of each sample's last output ends with the moment (CLOCK_MONOTONIC,
one clock for every process of the machine) the stand-in took the sample in: that is when vLLM would
have admitted it, and a GPU run's samples can finish no sooner than the last admission allows.

Sides, each a server process of its own, their bursts alternated in rounds:

- every ``--source`` tree (default: this checkout; another commit: ``git worktree add DIR COMMIT``)
  on uvloop, as ``python -m service`` runs, and on asyncio's own loop;
- ``bare``: a grpc.aio server on uvloop whose Generate writes one response per prompt: gRPC's own floor;
- ``bare-unary``: the same server's unary method answering one prompt with one response (256-RPC bursts
  only): what a unary whole-sample RPC would cost gRPC, against a one-message stream.

A burst is 256 concurrent Generate RPCs of one 128-token prompt (``many``) or one RPC of 256 prompts
(``one_rpc``), streamed or asking for whole samples, sent by a grpc.aio client in this process, as
the GPU benchmark's client sends them. Per side and kind: medians over the bursts of the server
process's CPU per sample, this client's CPU per sample, the burst's wall time and when the median and
the last sample reached the engine (ms from the burst's start; the bare servers stamp their handler's
start). Writes
``<date>-front-cost.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "clients/python/src")]

import grpc  # noqa: E402
from tandem.v1 import tandem_pb2 as pb  # noqa: E402
from tandem.v1 import tandem_pb2_grpc  # noqa: E402

SAMPLES, PROMPT_TOKENS, NEW_TOKENS = 256, 128, 256
HOLD_ENV = "FRONT_COST_HOLD_MS"
"""``--hold-ms``, as the server processes read it."""
STAMP_CHARS = 17
"""A sample's admission moment, ``f"{time.monotonic():17.6f}"``, at the end of its last output's text (a
streamed reply that merges chunks still ends with it)."""
STREAMED_OUTPUTS = 3
"""DELTA outputs per sample: the first token, then one per stream interval (128 at 256 running), then the rest."""
KINDS = ("many", "one_rpc")
WHOLE = (False, True)


# ---------------------------------------------------------------- the server side (subcommands)


def install_stand_in_vllm() -> type:
    """Put stand-ins for the vLLM names ``vllm_host`` imports into ``sys.modules``; returns the AsyncLLM stand-in."""

    class SamplingParams:
        def __init__(self, **fields) -> None:
            self.__dict__.update(fields)

    class RequestOutputKind:
        CUMULATIVE, DELTA, FINAL_ONLY = 0, 1, 2

    class LoRARequest:
        def __init__(self, lora_name: str, lora_int_id: int, lora_path: str = "") -> None:
            self.lora_name, self.lora_int_id, self.lora_path = lora_name, lora_int_id, lora_path

    class Completion(types.SimpleNamespace):
        pass

    class StandInAsyncLLM:
        """Answers every request with NEW_TOKENS tokens: STREAMED_OUTPUTS outputs (DELTA) or one (FINAL_ONLY)."""

        errored = False

        def __init__(self) -> None:
            self.output_processor = types.SimpleNamespace(stream_interval=1)

        async def generate(self, prompt, params, request_id, lora_request=None):
            admitted = stamp()
            await hold()
            outputs = 1 if params.output_kind == RequestOutputKind.FINAL_ONLY else STREAMED_OUTPUTS
            sizes = [1] * (outputs - 1) + [NEW_TOKENS - (outputs - 1)] if outputs > 1 else [NEW_TOKENS]
            for index, size in enumerate(sizes):
                await asyncio.sleep(0)
                last = index == len(sizes) - 1
                text = (admitted if last else "").rjust(size, "x")
                completion = Completion(token_ids=list(range(size)), text=text, logprobs=None, finish_reason="length" if last else None)
                yield types.SimpleNamespace(outputs=[completion], finished=last)

        def shutdown(self) -> None:
            pass

    names = {
        "vllm": {"SamplingParams": SamplingParams},
        "vllm.engine": {},
        "vllm.engine.arg_utils": {"AsyncEngineArgs": dict},
        "vllm.inputs": {"tokens_input": lambda ids, cache_salt=None: {"type": "token", "prompt_token_ids": ids, "cache_salt": cache_salt}},
        "vllm.lora": {},
        "vllm.lora.request": {"LoRARequest": LoRARequest},
        "vllm.sampling_params": {"RequestOutputKind": RequestOutputKind},
        "vllm.v1": {},
        "vllm.v1.engine": {},
        "vllm.v1.engine.async_llm": {"AsyncLLM": StandInAsyncLLM},
        "vllm.v1.engine.exceptions": {"EngineDeadError": type("EngineDeadError", (Exception,), {})},
    }
    for name, attributes in names.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        sys.modules[name] = module
    return StandInAsyncLLM


async def serve_tandem(source: Path) -> None:
    """The server of ``source`` with its VllmHost over the stand-in engine (LoadModel with fast_inference=false
    builds it: the tiny model's local host answers model calls, the stand-in samples)."""
    sys.path[:0] = [str(source)]
    stand_in = install_stand_in_vllm()
    from service.config import ServerConfig
    from service.runtime import host
    from service.runtime.engines.vllm_host import VllmHost
    from service.runtime.local_host import LocalHost
    from service.runtime.specs import EngineKind
    from service.server import start_server

    class StandInHost(VllmHost):
        @classmethod
        async def start(cls, ctx):
            local = await LocalHost.start(ctx)
            front = cls(stand_in(), ctx, local.bounds, local.eos_token_ids, local.adapter_version)
            front.call, front.inspect = local.call, local.inspect
            return front

    globals()["StandInHost"] = StandInHost
    host._HOST_MODULES[EngineKind.TRANSFORMERS] = (__name__, "StandInHost")
    cache = Path(tempfile.gettempdir()) / "tandem-front-cost"
    running = await start_server(ServerConfig(port=0, metrics_port=0, startup_model=None, cache_dir=cache))
    print(f"PORT {running.port}", flush=True)
    await asyncio.Event().wait()


UNARY_METHOD = "/tandem.bench.Bare/GenerateUnary"
"""The bare server's unary method (not part of Tandem's API)."""


async def hold() -> None:
    """Keep a sample ``--hold-ms`` before its outputs, as a GPU would decode it: the replies then come after
    the burst's admissions, not among them."""
    milliseconds = float(os.environ.get(HOLD_ENV, "0"))
    if milliseconds:
        await asyncio.sleep(milliseconds / 1000)


def stamp() -> str:
    """Now on CLOCK_MONOTONIC, as the end of a last output's text (STAMP_CHARS)."""
    return f"{time.monotonic():{STAMP_CHARS}.6f}"


def bare_response(index: int, admitted: str) -> pb.GenerateResponse:
    return pb.GenerateResponse(prompt_index=index, token_ids=list(range(NEW_TOKENS)), text=admitted.rjust(NEW_TOKENS, "x"), finish_reason=pb.FINISH_REASON_LENGTH)


async def serve_bare() -> None:
    """A grpc.aio server whose Generate writes one 256-token response per prompt, and whose unary method
    (UNARY_METHOD) answers a one-prompt request with one such response: what gRPC alone costs."""

    class Bare(tandem_pb2_grpc.TandemServiceServicer):
        async def Generate(self, request, context):
            admitted = stamp()
            await hold()
            for index in range(len(request.prompts)):
                await context.write(bare_response(index, admitted))

    async def generate_unary(request: pb.GenerateRequest, context) -> pb.GenerateResponse:
        admitted = stamp()
        await hold()
        return bare_response(0, admitted)

    unary = grpc.unary_unary_rpc_method_handler(generate_unary, request_deserializer=pb.GenerateRequest.FromString, response_serializer=pb.GenerateResponse.SerializeToString)
    server = grpc.aio.server()
    tandem_pb2_grpc.add_TandemServiceServicer_to_server(Bare(), server)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(UNARY_METHOD.split("/")[1], {"GenerateUnary": unary}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"PORT {port}", flush=True)
    await server.wait_for_termination()


# ---------------------------------------------------------------- the client side


@dataclass
class Side:
    """One server process."""

    name: str
    process: subprocess.Popen
    address: str
    tandem: bool
    unary: bool = False
    """Calls go to the bare server's UNARY_METHOD instead of Generate."""


def start_side(name: str, command: list[str], tandem: bool) -> Side:
    process = subprocess.Popen([sys.executable, __file__, *command], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)
    for line in process.stdout:
        if line.startswith("PORT "):
            return Side(name, process, f"127.0.0.1:{line.split()[1]}", tandem)
    raise RuntimeError(f"{name}: the server exited with {process.wait()} before binding")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def requests(kind: str, whole: bool) -> list[pb.GenerateRequest]:
    sampling = pb.SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True, temperature=1.0)
    prompts = [pb.Prompt(token_ids=pb.TokenIds(ids=[3 + (i * 7 + j) % 900 for j in range(PROMPT_TOKENS)])) for i in range(SAMPLES)]
    groups = [prompts] if kind == "one_rpc" else [[p] for p in prompts]
    return [pb.GenerateRequest(prompts=group, sampling=sampling, whole_samples=whole) for group in groups]


async def burst(call, batch: list[pb.GenerateRequest]) -> tuple[int, list[float]]:
    """All of ``batch`` at once through ``call`` (a request -> replies coroutine): the tokens that came back and
    each sample's admission moment."""
    tokens, admitted = 0, []
    for replies in await asyncio.gather(*(call(r) for r in batch)):
        tokens += sum(len(reply.token_ids) for reply in replies)
        admitted += [float(reply.text[-STAMP_CHARS:]) for reply in replies if reply.finish_reason]
    return tokens, admitted


def caller(side: Side, channel: grpc.aio.Channel):
    """A request -> replies coroutine for ``side``: Generate, or the bare server's unary method."""
    if side.unary:
        unary = channel.unary_unary(UNARY_METHOD, request_serializer=pb.GenerateRequest.SerializeToString, response_deserializer=pb.GenerateResponse.FromString)

        async def call(request: pb.GenerateRequest) -> list[pb.GenerateResponse]:
            return [await unary(request, timeout=60)]

        return call
    stub = tandem_pb2_grpc.TandemServiceStub(channel)

    async def call(request: pb.GenerateRequest) -> list[pb.GenerateResponse]:
        return [reply async for reply in stub.Generate(request, timeout=60)]

    return call


async def measure(side: Side, kind: str, whole: bool, bursts: int) -> list[dict]:
    """``bursts`` timed bursts (after one untimed) of one kind against one side."""
    batch = requests(kind, whole)
    results = []
    async with grpc.aio.insecure_channel(side.address) as channel:
        call = caller(side, channel)
        await burst(call, batch)
        for _ in range(bursts):
            server_before, client_before, started = cpu_seconds(side.process.pid), time.process_time(), time.monotonic()
            tokens, admitted = await burst(call, batch)
            wall = time.monotonic() - started
            if tokens != SAMPLES * NEW_TOKENS or len(admitted) != SAMPLES:
                raise RuntimeError(f"{side.name}: {tokens} tokens and {len(admitted)} samples in a burst, expected {SAMPLES * NEW_TOKENS} and {SAMPLES}")
            admitted_ms = sorted(1000 * (moment - started) for moment in admitted)
            results.append(
                {
                    "server_ms_per_sample": 1000 * (cpu_seconds(side.process.pid) - server_before) / SAMPLES,
                    "client_ms_per_sample": 1000 * (time.process_time() - client_before) / SAMPLES,
                    "wall_ms": 1000 * wall,
                    "admitted_p50_ms": admitted_ms[SAMPLES // 2],
                    "admitted_last_ms": admitted_ms[-1],
                }
            )
    return results


def load_stand_in(side: Side) -> None:
    with grpc.insecure_channel(side.address) as channel:
        for _ in tandem_pb2_grpc.TandemServiceStub(channel).LoadModel(pb.LoadModelRequest(fast_inference=False), timeout=300):
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    tandem = sub.add_parser("serve-tandem", help="(internal) one Tandem server over the stand-in engine")
    tandem.add_argument("--source", type=Path, required=True)
    tandem.add_argument("--loop", choices=["uvloop", "asyncio"], required=True)
    sub.add_parser("serve-bare", help="(internal) the bare grpc.aio server")
    parser.add_argument("--source", type=Path, action="append", help="a source tree to measure (repeatable; default this checkout)")
    parser.add_argument("--bursts", type=int, default=10, help="timed bursts per side, kind and round (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every side and kind (default 3)")
    parser.add_argument("--hold-ms", type=float, default=0.0, help="how long the engines keep each sample before answering (default 0: at once)")
    parser.add_argument("--out", type=Path, default=REPO / "tests/bench/results")
    args = parser.parse_args(argv)
    if args.command == "serve-tandem":
        import uvloop

        (uvloop.run if args.loop == "uvloop" else asyncio.run)(serve_tandem(args.source.resolve()))
        return 0
    if args.command == "serve-bare":
        import uvloop

        uvloop.run(serve_bare())
        return 0
    sources = [s.resolve() for s in (args.source or [REPO])]
    os.environ[HOLD_ENV] = str(args.hold_ms)  # the server processes inherit it
    sides = [start_side("bare", ["serve-bare"], tandem=False)]
    sides.append(dataclasses.replace(sides[0], name="bare-unary", unary=True))  # the same server, its unary method
    try:
        for source in sources:
            for loop in ("uvloop", "asyncio"):
                name = f"{source.name}:{loop}"
                sides.append(start_side(name, ["serve-tandem", "--source", str(source), "--loop", loop], tandem=True))
        for side in sides:
            if side.tandem:
                load_stand_in(side)
        runs: dict[str, list[dict]] = {}
        for _ in range(args.rounds):
            for kind in KINDS:
                for whole in WHOLE:
                    for side in sides:
                        if not side.tandem and not whole:
                            continue  # the bare server answers one message whatever is asked
                        if side.unary and kind != "many":
                            continue  # one response per call: only calls of one prompt
                        key = f"{side.name} {kind} {'whole' if whole else 'streamed'}"
                        runs.setdefault(key, []).extend(asyncio.run(measure(side, kind, whole, args.bursts)))
    finally:
        for side in sides:
            side.process.kill()  # the two bare sides share one process: killing it twice is harmless
    medians = {key: {figure: round(statistics.median(r[figure] for r in results), 3) for figure in results[0]} for key, results in runs.items()}
    print(f"\n{'side, kind':44} {'server ms/sample':>17} {'client ms/sample':>17} {'wall ms':>8} {'admitted p50, last ms':>22}")
    for key, f in medians.items():
        admitted = f"{f['admitted_p50_ms']:.1f}, {f['admitted_last_ms']:.1f}"
        print(f"{key:44} {f['server_ms_per_sample']:17.3f} {f['client_ms_per_sample']:17.3f} {f['wall_ms']:8.1f} {admitted:>22}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{datetime.date.today()}-front-cost.json"
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(), "python": platform.python_version(), "grpcio": grpc.__version__},
        "sources": [s.name for s in sources],  # directory names only: the record names no path of the machine
        "bursts": args.bursts,
        "hold_ms": args.hold_ms,
        "rounds": args.rounds,
        "medians": medians,
        "runs": runs,
    }
    path.write_text(json.dumps(record, indent=1))
    print(f"\nrecord: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
