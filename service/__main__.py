"""`python -m service`: flags -> ServerConfig -> serve."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
from dataclasses import fields
from pathlib import Path

import uvloop

from service.config import Limits, Role, ServerConfig, TlsConfig, default_cache_dir
from service.runtime.specs import TINY_MODEL_NAME
from service.startup_noise import silence_dependency_noise

AUTH_TOKEN_ENV = "TANDEM_AUTH_TOKEN"
MODEL_ENV = "TANDEM_MODEL"
ROLE_ENV = "TANDEM_ROLE"
ADAPTER_STORE_ENV = "TANDEM_ADAPTER_STORE"
TRAINER_ADDRESS_ENV = "TANDEM_TRAINER_ADDRESS"
ENGINE_COMPILE_ENV = "TANDEM_ENGINE_COMPILE"
TRAIN_COMPILE_ENV = "TANDEM_TRAIN_COMPILE"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_limit_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Limits field (--max-new-tokens ...), help and default from the dataclass."""
    group = parser.add_argument_group("limits", "over a per-request limit: INVALID_ARGUMENT; over a load limit: RESOURCE_EXHAUSTED")
    for limit in fields(Limits):
        group.add_argument(_flag(limit.name), type=int, default=limit.default, metavar="N", help=f"{limit.metadata['help']} (default %(default)s)")


def _add_security_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("security", "see docs/security.md")
    group.add_argument(
        "--auth-token-file",
        type=Path,
        default=None,
        help=f"require 'authorization: Bearer <token>' on every call but health; the token is this file's content "
        f"(default: ${AUTH_TOKEN_ENV} when set, else no authentication)",
    )
    group.add_argument("--tls-cert", type=Path, default=None, help="PEM certificate chain: serve TLS (needs --tls-key)")
    group.add_argument("--tls-key", type=Path, default=None, help="PEM private key of --tls-cert")
    group.add_argument("--tls-client-ca", type=Path, default=None, help="PEM CA bundle: require client certificates it signed (mutual TLS)")
    group.add_argument("--no-reflection", action="store_true", help="do not serve gRPC server reflection")
    group.add_argument(
        "--health-port", type=int, default=None, help="also serve grpc.health.v1 alone, plaintext and without a token, on this port (default off)"
    )


def _add_scale_out_flags(parser: argparse.ArgumentParser, defaults: ServerConfig) -> None:
    group = parser.add_argument_group("scale-out", "one trainer publishes adapter versions, samplers serve them: see docs/scale-out.md")
    group.add_argument(
        "--role",
        choices=[role.value for role in Role],
        default=os.environ.get(ROLE_ENV) or defaults.role.value,
        help=f"trainer: train and publish to --adapter-store; sampler: serve the newest published adapter; both: train and sample here "
        f"(default ${ROLE_ENV} when set, else {defaults.role.value})",
    )
    group.add_argument(
        "--adapter-store",
        type=Path,
        default=os.environ.get(ADAPTER_STORE_ENV) or None,
        metavar="DIR",
        help=f"adapter store directory shared by the trainer and its samplers (default ${ADAPTER_STORE_ENV} when set)",
    )
    group.add_argument(
        "--trainer-address",
        default=os.environ.get(TRAINER_ADDRESS_ENV) or None,
        metavar="HOST:PORT",
        help=f"sampler: where TrainStep goes, named in refusals and GetModel (default ${TRAINER_ADDRESS_ENV} when set)",
    )
    group.add_argument(
        "--max-adapter-wait-seconds",
        type=float,
        default=defaults.max_adapter_wait_seconds,
        metavar="S",
        help="longest a Generate with min_adapter_version and no deadline waits for that version (default %(default)s)",
    )


def _check_scale_out(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.role not in {role.value for role in Role}:  # argparse checks choices on the command line only, not $TANDEM_ROLE
        parser.error(f"${ROLE_ENV}={args.role!r} is not a role: use one of {', '.join(role.value for role in Role)}")
    if args.role == Role.BOTH.value and args.adapter_store is not None:
        parser.error("--adapter-store needs --role trainer or --role sampler")
    if args.role != Role.BOTH.value and args.adapter_store is None:
        parser.error(f"--role {args.role} needs --adapter-store")
    if args.trainer_address is not None and args.role != Role.SAMPLER.value:
        parser.error("--trainer-address is for --role sampler")
    if args.max_adapter_wait_seconds < 0:
        parser.error(f"--max-adapter-wait-seconds must be at least 0, got {args.max_adapter_wait_seconds:g}")


def _auth_token(parser: argparse.ArgumentParser, path: Path | None) -> str | None:
    token = path.read_text().strip() if path is not None else os.environ.get(AUTH_TOKEN_ENV, "").strip()
    if path is not None and not token:
        parser.error(f"--auth-token-file {path} is empty")
    return token or None


def _tls(parser: argparse.ArgumentParser, args: argparse.Namespace) -> TlsConfig | None:
    if args.tls_cert is None and args.tls_key is None:
        if args.tls_client_ca is not None:
            parser.error("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if args.tls_cert is None or args.tls_key is None:
        parser.error("--tls-cert and --tls-key go together")
    return TlsConfig(args.tls_cert, args.tls_key, args.tls_client_ca)


def parse_config(argv: list[str] | None = None) -> ServerConfig:
    """Build the one ServerConfig from command-line flags (and $TANDEM_AUTH_TOKEN, $TANDEM_MODEL)."""
    defaults = ServerConfig()
    parser = argparse.ArgumentParser(prog="python -m service", description="Tandem: sample from and train one 4-bit model over gRPC.")
    parser.add_argument("--host", default=defaults.host, help="address to bind gRPC and metrics to (default %(default)s)")
    parser.add_argument("--port", type=int, default=defaults.port, help="gRPC port; 0 picks a free one (default %(default)s)")
    parser.add_argument("--metrics-port", type=int, default=defaults.metrics_port, help="Prometheus /metrics port; 0 picks a free one (default %(default)s)")
    parser.add_argument(
        "--model",
        default=os.environ.get(MODEL_ENV) or TINY_MODEL_NAME,
        help=f"model to load at start-up: a built-in name, a directory under a --model-root, or 'none' to start empty "
        f"(default ${MODEL_ENV} when set, else {TINY_MODEL_NAME})",
    )
    parser.add_argument("--model-root", type=Path, action="append", default=[], help="directory model names resolve under (repeatable)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where built-in models are made (default $TANDEM_CACHE_DIR or ~/.cache/tandem)")
    parser.add_argument("--checkpoint-root", type=Path, default=None, help="where adapter checkpoints are written (default <cache-dir>/adapters)")
    parser.add_argument("--grace-seconds", type=float, default=defaults.grace_seconds, help="drain time on SIGTERM (default %(default)s)")
    parser.add_argument("--log-level", default="INFO", help="logging level (default %(default)s)")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="CPU threads torch uses per operation (default: one per core); 1 avoids stalls where other processes share the cores",
    )
    _add_switch(
        parser,
        "--engine-compile",
        ENGINE_COMPILE_ENV,
        "vLLM engine: torch.compile the model (on: faster generation; off: LoadModel about 50 s sooner on a cold "
        "start, 20 s on a warm one, measured on an H200; BENCHMARKS.md)",
    )
    _add_switch(
        parser,
        "--train-compile",
        TRAIN_COMPILE_ENV,
        "vLLM engine: torch.compile the trainer's decoder layers for TrainStep (on: their forward + backward ran 1.6x "
        "as fast on an H200, and the first TrainStep after LoadModel compiles, 72 s there; off: eager training)",
    )
    _add_limit_flags(parser)
    _add_security_flags(parser)
    _add_scale_out_flags(parser, defaults)
    args = parser.parse_args(argv)
    _check_scale_out(parser, args)
    if args.torch_threads is not None and args.torch_threads < 1:
        parser.error(f"--torch-threads must be at least 1, got {args.torch_threads}")
    for limit in fields(Limits):
        if getattr(args, limit.name) < 1:
            parser.error(f"{_flag(limit.name)} must be at least 1, got {getattr(args, limit.name)}")
    limits = Limits(**{limit.name: getattr(args, limit.name) for limit in fields(Limits)})
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
        limits=limits,
        auth_token=_auth_token(parser, args.auth_token_file),
        tls=_tls(parser, args),
        reflection=not args.no_reflection,
        health_port=args.health_port,
        role=Role(args.role),
        adapter_store=args.adapter_store,
        trainer_address=args.trainer_address,
        max_adapter_wait_seconds=args.max_adapter_wait_seconds,
        torch_threads=args.torch_threads,
        engine_compile=args.engine_compile == "on",
        train_compile=args.train_compile == "on",
    )


def _add_switch(parser: argparse.ArgumentParser, flag: str, env: str, help: str) -> None:
    """An on/off flag, on by default, whose default the environment variable ``env`` may set."""
    parser.add_argument(flag, choices=["on", "off"], default=os.environ.get(env) or "on", help=f"{help} (default ${env} when set, else on)")


def main() -> None:
    silence_dependency_noise()  # before anything imports torch, bitsandbytes or transformers
    from service.runtime.engines.vllm_backend import configure_process

    config = parse_config()
    configure_process(torch_compile=config.engine_compile, compile_training=config.train_compile)
    _start_engine_fork_server()
    from service.server import serve  # after logging is configured and the fork server started; imports torch

    # uvloop, as under vLLM's own server: against asyncio's loop, with the real server, interceptors and vLLM
    # host over an engine that answers at once, 7-13% less CPU per streamed Generate call (BENCHMARKS.md)
    uvloop.run(serve(config))


def _start_engine_fork_server() -> None:
    """Where vLLM is installed, start the engine process's fork server before this process imports torch, so that
    its imports (torch, transformers, vLLM: longer than the server's own start) run beside the server's
    (engine_launch.py). Started after those, it made a LoadModel sent as soon as the server answered wait 10 s
    for them; started first, 2 s (warm LoadModel 29.8 s -> 22.7 s on an H100, BENCHMARKS.md). Without a GPU
    the fork server is never used."""
    if importlib.util.find_spec("vllm") is None:
        return
    from service.runtime.engines.engine_launch import fork_server_enabled, start_fork_server

    if fork_server_enabled():
        start_fork_server()


if __name__ == "__main__":
    main()
