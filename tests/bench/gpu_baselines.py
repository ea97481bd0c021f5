"""The GPU benchmark's baselines, each in a process of its own (gpu_bench.py starts them).

    python tests/bench/gpu_baselines.py serve --engine {llm,async_llm} --cache-dir DIR --adapter-dir DIR [--fork-server]
    python tests/bench/gpu_baselines.py serve --engine peft --cache-dir DIR --adapter-dir DIR
    python tests/bench/gpu_baselines.py serve --engine tandem_host --cache-dir DIR --adapter-dir DIR

``--engine peft``: a plain PEFT + bitsandbytes training loop on TrainStep's
batch (forward, cross-entropy, backward, clip to 1.0, AdamW). On start it
saves the rank-64 adapter (random non-zero B) that the vLLM baselines serve,
so LoRA changes what they sample, and makes one warm-up step; then each
``run train`` makes one timed step. gpu_bench.py pairs these steps with
Tandem's TrainSteps, one after the other, so GPU drift reaches both alike.
Nothing on this path imports vLLM.

The vLLM engines: vLLM alone on the same model with the engine arguments Tandem uses
(``vllm_backend.engine_kwargs`` of the same LoadSpec, without Tandem's worker
extension) and that adapter from its directory:

- ``llm``: ``LLM.generate`` of all prompts at once; ``VLLM_ENABLE_V1_MULTIPROCESSING``
  decides where the engine core runs (0: in this process, 1: a child process).
- ``async_llm``: ``AsyncLLM`` (engine core in a child process), one ``generate()``
  per prompt, all concurrent, FINAL_ONLY outputs as Tandem's whole-sample Generate asks vLLM for them.
  ``--fork-server``: its engine core forked from Tandem's fork server (``engine_launch.py``), as Tandem's is.

And for gpu_engine_ab.py, ``tandem_host``: Tandem's ``VllmHost`` without gRPC and the controller: its
engine process (fork server, the trainer built in vLLM's worker, the trained adapter in its pinned
in-memory slot) and its per-sample front code, one concurrent whole-sample ``VllmHost.generate()`` per
prompt, sampling the trained adapter as a Generate call does.

Protocol: this process writes JSON lines on its standard output, the first
``{"event": "ready", ...}`` once the engine is up (``start_seconds``; the PEFT
loop adds ``warmup_step_seconds`` and ``tokens_per_step``); then it reads
commands from its standard input and answers each with one
``{"event": "run", ...}`` line (mode, tokens, seconds, tokens_per_second):
``run text`` or ``run ids`` (detokenize off) for the vLLM engines, ``run
train`` (one timed step) for the PEFT loop; ``quit`` shuts it down. Everything
else (vLLM's, transformers' output) goes to standard error.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import os
import sys
import time
from pathlib import Path
from collections.abc import AsyncIterator, Callable
from typing import IO, Any

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "clients/python/src")]

from service.runtime.engines import vllm_backend  # noqa: E402
from service.tiny_model import ensure_builtin_model  # noqa: E402
from tests.bench.gpu_workload import (  # noqa: E402
    LEARNING_RATE,
    MODEL,
    NEW_TOKENS,
    PROMPT_TOKENS,
    PROMPTS,
    TEMPERATURE,
    load_spec,
    prompt_ids,
    reply_spread,
    train_batch,
    train_tokens,
)

MODES = ("text", "ids")
"""The vLLM engines' runs. ``text``: vLLM detokenizes, as it returns text by default; ``ids``: ``detokenize=False``."""
TRAIN_MODES = ("train",)
"""The PEFT loop's runs: one timed training step."""
ENGINES = ("llm", "async_llm", "peft", "tandem_host")
LORA_ID = 1
BASELINE_OPTIONS = dataclasses.replace(vllm_backend.VllmOptions(), torch_compile=True)
"""The vLLM baselines' engine settings: Tandem's, with vLLM's default compilation and CUDA graphs."""


def baseline_engine_kwargs(model_dir: Path) -> dict[str, Any]:
    """Tandem's engine arguments for the benchmark's LoadSpec, without Tandem's worker extension, with
    vLLM's default compilation and CUDA graphs (Tandem's may differ: ``--engine-compile``) and with
    ``max_num_batched_tokens`` pinned to what Tandem's engine resolves it to.

    vLLM picks that default by entry point: ``AsyncLLM.from_engine_args`` (Tandem's, usage context
    ENGINE_CONTEXT) gets 2048, ``LLM`` 16384 on a large GPU. It sizes prefill chunks and is part of
    the compile cache's key, so leaving it to ``LLM`` would compare other settings and compile anew.
    """
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext

    kwargs = vllm_backend.engine_kwargs(load_spec(), model_dir, BASELINE_OPTIONS)
    del kwargs["worker_extension_cls"]
    tandem = AsyncEngineArgs(**kwargs).create_engine_config(UsageContext.ENGINE_CONTEXT)
    kwargs["max_num_batched_tokens"] = tandem.scheduler_config.max_num_batched_tokens
    return kwargs


def serve_peft(model_dir: Path, adapter_dir: Path, protocol: IO[str]) -> None:
    """Save the baselines' adapter and make one warm-up step, then one timed step of the plain PEFT loop per
    ``run train``, until ``quit``."""
    import torch

    from service.runtime.peft_model import attach_lora, load_hf_base

    device, dtype = torch.device("cuda", 0), torch.bfloat16
    spec = load_spec()
    started = time.perf_counter()
    model = attach_lora(load_hf_base(model_dir, spec, dtype, device), spec)
    load_seconds = time.perf_counter() - started
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=1e-3)
    model.save_pretrained(str(adapter_dir))

    batch = train_batch()
    ids = torch.tensor(batch, device=device)
    tokens = train_tokens(batch)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LEARNING_RATE, weight_decay=0.0)  # TrainStep's defaults
    model.train()

    def step() -> float:
        """One training step, timed between two device synchronizations: forward with labels (cross-entropy),
        backward, clip to 1.0, AdamW, zero the gradients."""
        torch.cuda.synchronize()
        step_started = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        return time.perf_counter() - step_started

    ready = {"start_seconds": load_seconds, "warmup_step_seconds": step(), "tokens_per_step": tokens}
    for mode in commands(protocol, ready, TRAIN_MODES):
        send(protocol, run_result(mode, tokens, step()))


def sampling_params(mode: str, output_kind=None):
    """The benchmark's sampling: NEW_TOKENS tokens, no early stop, temperature 1; detokenized in ``text`` mode."""
    from vllm import SamplingParams

    extra = {} if output_kind is None else {"output_kind": output_kind}
    return SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True, temperature=TEMPERATURE, detokenize=mode == "text", **extra)


def scheduling(vllm_config) -> dict:
    """The scheduler settings the engine runs with, for the record."""
    scheduler = vllm_config.scheduler_config
    return {
        "async_scheduling": scheduler.async_scheduling,
        "max_num_batched_tokens": scheduler.max_num_batched_tokens,
        "max_num_seqs": scheduler.max_num_seqs,
    }


def run_result(mode: str, tokens: int, seconds: float) -> dict:
    """The protocol's answer to one run."""
    return {"event": "run", "mode": mode, "tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds}


def serve_llm(kwargs: dict[str, Any], adapter_dir: Path, protocol: IO[str]) -> None:
    """``LLM.generate`` of all prompts per run, until ``quit``."""
    from vllm import LLM
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    started = time.perf_counter()
    llm = LLM(**kwargs)
    ready = {"start_seconds": time.perf_counter() - started, **scheduling(llm.llm_engine.vllm_config)}
    lora = LoRARequest("bench", LORA_ID, str(adapter_dir))
    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids(PROMPTS, PROMPT_TOKENS)]

    def run(mode: str) -> dict:
        params = sampling_params(mode)
        run_started = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False, lora_request=lora)
        seconds = time.perf_counter() - run_started
        return run_result(mode, sum(len(o.outputs[0].token_ids) for o in outputs), seconds)

    try:
        for mode in commands(protocol, ready, MODES):
            send(protocol, run(mode))
    finally:
        llm.llm_engine.engine_core.shutdown()


async def serve_async_llm(kwargs: dict[str, Any], adapter_dir: Path, protocol: IO[str], fork_server: bool) -> None:
    """One concurrent ``AsyncLLM.generate()`` per prompt per run (FINAL_ONLY outputs), until ``quit``; with
    ``fork_server`` the engine core is forked from Tandem's fork server."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    started = time.perf_counter()
    if fork_server:
        from service.runtime.engines import engine_launch

        engine_launch.use_fork_server()
    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
    ready = {"start_seconds": time.perf_counter() - started, **scheduling(engine.vllm_config)}
    lora = LoRARequest("bench", LORA_ID, str(adapter_dir))
    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids(PROMPTS, PROMPT_TOKENS)]
    request_ids = itertools.count()

    async def token_counts(prompt, params) -> AsyncIterator[int]:
        async for output in engine.generate(prompt, params, f"bench-{next(request_ids)}", lora_request=lora):
            yield len(output.outputs[0].token_ids)

    def samples(mode: str) -> list[AsyncIterator[int]]:
        params = sampling_params(mode, RequestOutputKind.FINAL_ONLY)
        return [token_counts(prompt, params) for prompt in prompts]

    try:
        await serve_concurrent_runs(protocol, ready, samples)
    finally:
        engine.shutdown()


async def serve_tandem_host(model_dir: Path, protocol: IO[str]) -> None:
    """One concurrent whole-sample ``VllmHost.generate()`` per prompt per run, sampling the trained adapter, until ``quit``."""
    from service.runtime.engines.base import EngineRequest
    from service.runtime.engines.vllm_host import VllmHost
    from service.runtime.host_context import HostContext
    from service.runtime.model import load_tokenizer
    from service.runtime.specs import SamplingSpec

    started = time.perf_counter()
    context = HostContext(load_spec(), model_dir, load_tokenizer(model_dir), device_loop=None, report=lambda *_, **__: None, on_dead=lambda: None)
    host = await VllmHost.start(context)
    ready = {"start_seconds": time.perf_counter() - started}
    sampling = SamplingSpec(max_tokens=NEW_TOKENS, ignore_eos=True, temperature=TEMPERATURE)
    prompts = prompt_ids(PROMPTS, PROMPT_TOKENS)
    request_ids = itertools.count()

    async def token_counts(request: EngineRequest) -> AsyncIterator[int]:
        async for chunks in host.generate([request]):
            for chunk in chunks:
                yield len(chunk.token_ids)

    def samples(mode: str) -> list[AsyncIterator[int]]:
        return [
            token_counts(EngineRequest(f"bench-{next(request_ids)}", 0, 0, tuple(ids), sampling, adapter="", token_ids_only=mode == "ids", whole_sample=True))
            for ids in prompts
        ]

    try:
        await serve_concurrent_runs(protocol, ready, samples)
    finally:
        await host.shutdown()


async def serve_concurrent_runs(protocol: IO[str], ready: dict, samples: Callable[[str], list[AsyncIterator[int]]]) -> None:
    """Per ``run`` command, run ``samples(mode)`` (each yields the tokens of every output it gets) all at once and
    answer with the tokens, the time and when the samples' first and last outputs came; until ``quit``."""

    async def one(sample: AsyncIterator[int], run_started: float) -> tuple[int, float, float]:
        tokens, first = 0, None
        async for count in sample:
            if first is None:
                first = time.perf_counter() - run_started
            tokens += count
        return tokens, first, time.perf_counter() - run_started

    lines = commands(protocol, ready, MODES)
    while (mode := await asyncio.to_thread(next, lines, None)) is not None:
        run_samples = samples(mode)
        run_started = time.perf_counter()
        results = await asyncio.gather(*(one(sample, run_started) for sample in run_samples))
        result = run_result(mode, sum(r[0] for r in results), time.perf_counter() - run_started)
        send(protocol, {**result, "replies": reply_spread([r[1] for r in results], [r[2] for r in results])})


def commands(protocol: IO[str], ready: dict, modes: tuple[str, ...]):
    """Announce readiness, then yield the mode of each ``run`` command (one of ``modes``) until ``quit`` or end of input."""
    send(protocol, {"event": "ready", "pid": os.getpid(), "multiprocessing": os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING"), **ready})
    for line in sys.stdin:
        words = line.split()
        if words == ["quit"]:
            return
        if len(words) != 2 or words[0] != "run" or words[1] not in modes:
            accepted = ", ".join(f"'run {mode}'" for mode in modes)
            raise ValueError(f"unknown command {line.strip()!r}: use {accepted} or 'quit'")
        yield words[1]


def send(protocol: IO[str], message: dict) -> None:
    """One protocol line."""
    protocol.write(json.dumps(message) + "\n")
    protocol.flush()


def serve(engine: str, model_dir: Path, adapter_dir: Path, fork_server: bool) -> None:
    """Keep the protocol on this process's standard output and send everything else printed to standard error."""
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    if engine == "peft":  # before anything that imports vLLM
        serve_peft(model_dir, adapter_dir, protocol)
        return
    vllm_backend.configure_process()  # as the server's start does: any process vLLM spawns is a new interpreter
    if engine == "tandem_host":
        asyncio.run(serve_tandem_host(model_dir, protocol))
        return
    kwargs = baseline_engine_kwargs(model_dir)
    if engine == "llm":
        serve_llm(kwargs, adapter_dir, protocol)
    else:
        asyncio.run(serve_async_llm(kwargs, adapter_dir, protocol, fork_server))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands_parser = parser.add_subparsers(dest="command", required=True)
    served = commands_parser.add_parser("serve", help="a vLLM engine answering 'run text' / 'run ids' lines, or the PEFT loop answering 'run train'")
    served.add_argument("--engine", choices=ENGINES, required=True)
    served.add_argument("--cache-dir", type=Path, required=True, help="where the built-in model is (made if missing)")
    served.add_argument("--adapter-dir", type=Path, required=True, help="the baselines' adapter (the PEFT loop saves it there)")
    served.add_argument("--fork-server", action="store_true", help="async_llm: fork the engine core from Tandem's fork server")
    args = parser.parse_args()
    model_dir = ensure_builtin_model(MODEL, args.cache_dir)
    serve(args.engine, model_dir, args.adapter_dir, args.fork_server)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # the engine is shut down; skip interpreter teardown, which can hang on vLLM's threads


if __name__ == "__main__":
    main()
