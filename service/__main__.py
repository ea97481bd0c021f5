"""`python -m service`: flags -> ServerConfig -> serve."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from service.config import Limits, ServerConfig, default_cache_dir
from service.runtime.specs import TINY_MODEL_NAME


def parse_config(argv: list[str] | None = None) -> ServerConfig:
    """Build the one ServerConfig from command-line flags."""
    defaults = ServerConfig()
    parser = argparse.ArgumentParser(prog="python -m service", description="Tandem: sample from and train one 4-bit model over gRPC.")
    parser.add_argument("--host", default=defaults.host, help="address to bind gRPC and metrics to (default %(default)s)")
    parser.add_argument("--port", type=int, default=defaults.port, help="gRPC port; 0 picks a free one (default %(default)s)")
    parser.add_argument("--metrics-port", type=int, default=defaults.metrics_port, help="Prometheus /metrics port; 0 picks a free one (default %(default)s)")
    parser.add_argument(
        "--model",
        default=TINY_MODEL_NAME,
        help="model to load at start-up: a built-in name, a directory under a --model-root, or 'none' to start empty (default %(default)s)",
    )
    parser.add_argument("--model-root", type=Path, action="append", default=[], help="directory model names resolve under (repeatable)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where built-in models are made (default $TANDEM_CACHE_DIR or ~/.cache/tandem)")
    parser.add_argument("--checkpoint-root", type=Path, default=None, help="where adapter checkpoints are written (default <cache-dir>/adapters)")
    parser.add_argument("--grace-seconds", type=float, default=defaults.grace_seconds, help="drain time on SIGTERM (default %(default)s)")
    parser.add_argument("--log-level", default="INFO", help="logging level (default %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return ServerConfig(
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port,
        startup_model=None if args.model == "none" else args.model,
        model_roots=tuple(args.model_root),
        cache_dir=args.cache_dir or default_cache_dir(),
        checkpoint_root=args.checkpoint_root,
        grace_seconds=args.grace_seconds,
        limits=Limits(),
    )


def main() -> None:
    from service.server import serve  # after logging is configured; imports torch

    asyncio.run(serve(parse_config()))


if __name__ == "__main__":
    main()
