"""Where a TrainStep's time goes in vLLM's engine process (a diagnostic program, GPU only).

    python tests/bench/gpu_train_profile.py [--steps N] [--json FILE] [--cache-dir DIR] [--train-compile on|off]

Loads the 1.1B-shaped model on the vLLM engine (eager: no compile) through the
controller, with the trainer's layers eager (the default) or compiled as the
service runs them by default (``--train-compile on``: the first step of each
loop on the trainer's model then compiles, and is left out of the medians), then runs ``tests/gpu/probes.train_profile`` in the engine's process:
the full TrainStep path, a plain PEFT forward/backward on the same model and
batch, a forward alone, and the same on the base loaded again by transformers
in the same process, then a torch.profiler table of each; then, with the
engine stopped, the same plain loop and host-speed check in this program's
own process (``standalone``), which never ran vLLM's engine; prints it as JSON
(``--json FILE`` writes it there too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from prometheus_client import CollectorRegistry  # noqa: E402

from service.config import ServerConfig  # noqa: E402
from service.metrics import Metrics  # noqa: E402
from service.runtime.controller import Controller  # noqa: E402
from service.runtime.engines import vllm_backend  # noqa: E402
from service.runtime.specs import LoadSpec, LoraSpec  # noqa: E402
from service.tiny_model import ensure_builtin_model  # noqa: E402
from tests.bench.gpu_workload import LORA_ALPHA, LORA_RANK, MODEL  # noqa: E402
from tests.gpu import probes  # noqa: E402


async def profile(steps: int, cache: Path | None, compile_training: bool) -> dict:
    cache = cache or Path(tempfile.mkdtemp(prefix="tandem-train-profile-"))
    model_dir = ensure_builtin_model(MODEL, cache)
    vllm_backend.OPTIONS = vllm_backend.VllmOptions(enforce_eager=True)
    vllm_backend.configure_process(compile_training=compile_training)
    controller = Controller(ServerConfig(cache_dir=cache, startup_model=None), Metrics(CollectorRegistry()))
    controller.start()
    spec = LoadSpec(model_name=MODEL, fast_inference=True, gpu_memory_utilization=0.3, lora=LoraSpec(rank=LORA_RANK, alpha=LORA_ALPHA))
    async for _ in controller.load_model(spec):
        pass
    try:
        info = await controller.host.inspect(probes.train_profile, steps)
    finally:
        await controller.stop()
    info["standalone"] = standalone(model_dir, spec, steps)
    for part in (info, info["standalone"]):
        for key in [k for k in part if k.endswith("_s") and isinstance(part[k], list)]:
            part[key.removesuffix("_s") + "_median_s"] = statistics.median(part[key][1:])
    return info


def standalone(model_dir: Path, spec: LoadSpec, steps: int) -> dict:
    """The probe's plain loop on a freshly loaded PEFT model in this process, and its host-speed check."""
    import torch

    from tests.bench.gpu_workload import train_batch

    device = torch.device("cuda", 0)
    model = probes.own_model(model_dir, spec, torch.bfloat16, device)
    ids = torch.tensor(train_batch(), device=device)
    return {
        "own_model_plain_fwd_bwd_s": probes.timed_steps(lambda: probes.plain_step(model, ids), steps),
        "host_speed": probes.host_speed(device),
        "process": probes.process_setup(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the 1.1B model is made or found (default: a new temporary directory)")
    parser.add_argument("--train-compile", choices=["on", "off"], default="off", help="the trainer's layers compiled, as the service's default (default off: eager)")
    args = parser.parse_args()
    info = asyncio.run(profile(args.steps, args.cache_dir, args.train_compile == "on"))
    info["train_compile"] = args.train_compile
    text = json.dumps(info, indent=1)
    print(text)
    if args.json is not None:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
