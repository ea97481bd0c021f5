"""Cold and warm LoadModel under different engine environments, on one machine (a diagnostic program, GPU only).

    python tests/bench/gpu_cold_start.py --work DIR --variant NAME:KEY=VALUE[,KEY=VALUE] [--variant ...] [--out FILE]

The benchmark's model is made first. Then, for each variant in the order given: a new server (``python -m service --model none``)
whose environment adds the variant's settings, with its own empty vLLM, inductor and
Triton caches, gets the benchmark's LoadModel (cold); it stops, and a second server
on the same caches gets it again (warm). Each LoadModel is recorded with vLLM's own
start-up timings (``gpu_bench.load_model``). Variants run one after another on the
same GPU, so compare them within one run of this program only; the first variant
also pays for whatever the machine reads from disk for the first time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from service.tiny_model import ensure_builtin_model  # noqa: E402
from tests.bench.gpu_bench import Clock, child_environment, load_model, start_tandem, stop_tandem  # noqa: E402
from tests.bench.gpu_workload import MODEL  # noqa: E402

LOAD_TIMEOUT_SECONDS = 300.0


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """``NAME:KEY=VALUE,KEY=VALUE`` (``NAME:`` alone: nothing added) as the name and its settings."""
    name, _, settings = text.partition(":")
    pairs = [item.split("=", 1) for item in settings.split(",") if item]
    if not name or any(len(pair) != 2 for pair in pairs):
        raise argparse.ArgumentTypeError(f"{text!r}: use NAME:KEY=VALUE[,KEY=VALUE]")
    return name, dict(pairs)


def measure(work: Path, name: str, settings: dict[str, str], clock: Clock) -> dict:
    """Cold, then warm LoadModel for one variant, each on a new server."""
    caches = work / name
    env = {
        **child_environment(caches / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(caches / "inductor"),
        "TRITON_CACHE_DIR": str(caches / "triton"),
        **settings,
    }
    result: dict = {"settings": settings}
    for state in ("cold", "warm"):
        server = start_tandem(work / "cache", work / "logs", env)
        try:
            load = load_model(server, timeout=LOAD_TIMEOUT_SECONDS)
        finally:
            stop_tandem(server, clock)
        result[state] = {key: load[key] for key in ("seconds", "engine_log", "progress")}
        clock.log(f"{name} {state}: LoadModel {load['seconds']:.1f} s; vLLM: {load['engine_log']}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="model cache, logs and each variant's compile caches (kept)")
    parser.add_argument("--variant", type=parse_variant, action="append", required=True, help="NAME:KEY=VALUE[,KEY=VALUE]")
    parser.add_argument("--out", type=Path, default=None, help="write the results here as JSON")
    args = parser.parse_args()
    clock = Clock(3600.0)
    ensure_builtin_model(MODEL, args.work / "cache")  # made once, before any LoadModel is timed
    results = {name: measure(args.work, name, settings, clock) for name, settings in args.variant}
    text = json.dumps(results, indent=1)
    if args.out:
        args.out.write_text(text)
    print(json.dumps({name: {state: round(r[state]["seconds"], 1) for state in ("cold", "warm")} for name, r in results.items()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
