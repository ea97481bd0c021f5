"""Where Generate's time goes without gRPC: the runtime (controller + device loop + vLLM engine) in one process.

gpu_bench.py runs it in a process of its own. It loads the benchmark model
through the Controller, then generates the benchmark batch as PROMPTS
concurrent ``controller.generate`` calls, timing the device thread's time
inside vLLM's ``LLMEngine.step`` and inside the engine adapter's ``step``
(vLLM plus the conversion to SampleChunks), and TrainStep's phases. It does
so with Python's default thread switch interval, 1 ms, and the one the vLLM
backend sets.

    python tests/bench/gpu_runtime_profile.py --cache-dir DIR --json OUT.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from prometheus_client import CollectorRegistry  # noqa: E402

from service.config import ServerConfig  # noqa: E402
from service.metrics import Metrics  # noqa: E402
from service.runtime.controller import Controller  # noqa: E402
from service.runtime.engines.vllm_backend import GIL_SWITCH_SECONDS  # noqa: E402
from service.runtime.specs import GenerateSpec, ModelDescription, OptimizerSpec, PromptSpec, SamplingSpec, TrainSequenceSpec, TrainSpec  # noqa: E402
from tests.bench.gpu_workload import LEARNING_RATE, NEW_TOKENS, PROMPT_TOKENS, PROMPTS, load_spec, prompt_ids, train_batch  # noqa: E402

SWITCH_INTERVALS = (0.005, 0.001, GIL_SWITCH_SECONDS)


class StepTimer:
    """Wraps a callable, adding up the seconds spent in it."""

    def __init__(self, fn) -> None:
        self.fn = fn
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started
            self.calls += 1


async def generate_all(controller: Controller, prompts: list[list[int]]) -> tuple[int, int]:
    """(tokens, chunks) of PROMPTS concurrent single-prompt calls."""
    sampling = SamplingSpec(max_tokens=NEW_TOKENS, ignore_eos=True, temperature=1.0)

    async def one(ids: list[int]) -> tuple[int, int]:
        tokens = chunks = 0
        async for chunk in controller.generate(GenerateSpec(prompts=(PromptSpec(token_ids=tuple(ids)),), sampling=sampling)):
            tokens += len(chunk.token_ids)
            chunks += 1
        return tokens, chunks

    counts = await asyncio.gather(*(one(ids) for ids in prompts))
    return sum(t for t, _ in counts), sum(c for _, c in counts)


async def mean_train_phases(controller: Controller, train: TrainSpec, steps: int) -> dict:
    """Mean seconds of each TrainStep phase over ``steps`` steps."""
    results = [(await controller.train_step(train)).seconds for _ in range(steps)]
    return {name: sum(getattr(r, name) for r in results) / steps for name in ("prepare", "forward_backward", "optimizer", "sync", "total")}


async def profile(cache_dir: Path) -> dict:
    controller = Controller(ServerConfig(cache_dir=cache_dir, startup_model=None), Metrics(CollectorRegistry()))
    controller.start()
    try:
        async for event in controller.load_model(load_spec()):
            if isinstance(event, ModelDescription):
                print(f"loaded in {event.load_seconds:.1f} s", flush=True)
        engine = controller._model.engine
        vllm_step = engine._llm.step = StepTimer(engine._llm.step)
        adapter_step = engine.step = StepTimer(engine.step)
        prompts = prompt_ids(PROMPTS, PROMPT_TOKENS)
        await generate_all(controller, prompts[:16])
        result = {}
        train = TrainSpec(sequences=tuple(TrainSequenceSpec(token_ids=tuple(ids)) for ids in train_batch()), optimizer=OptimizerSpec(learning_rate=LEARNING_RATE))
        await controller.train_step(train)
        for interval in SWITCH_INTERVALS:
            label = f"switch_interval_{interval * 1000:g}ms"
            sys.setswitchinterval(interval)
            vllm_step.seconds = adapter_step.seconds = 0.0
            vllm_step.calls = 0
            started = time.perf_counter()
            tokens, chunks = await generate_all(controller, prompts)
            wall = time.perf_counter() - started
            result[label] = {
                "tokens_per_second": tokens / wall,
                "chunks": chunks,
                "engine_steps": vllm_step.calls,
                "wall_seconds": wall,
                "in_vllm_step_seconds": vllm_step.seconds,
                "in_adapter_step_seconds": adapter_step.seconds,
                "train_step_mean_phase_seconds": await mean_train_phases(controller, train, steps=5),
            }
            print(label, json.dumps(result[label]), flush=True)
        return result
    finally:
        controller.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    args.json.write_text(json.dumps(asyncio.run(profile(args.cache_dir)), indent=2))


if __name__ == "__main__":
    main()
