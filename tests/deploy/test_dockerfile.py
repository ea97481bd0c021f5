"""The GPU image's entrypoint, flags, ports and volumes agree with the server's CLI and the manifests."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from service.__main__ import parse_config
from service.config import ServerConfig
from tests.deploy.manifests import KUSTOMIZATIONS, container_argv, load, render
from tests.support.server import REPO, require_tool

DOCKERFILE = REPO / "deploy" / "Dockerfile"
ENGINE_CACHES = ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    parsed: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        parsed.append((keyword.upper(), arguments.strip()))
        pending = ""
    return parsed


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    """deploy/Dockerfile's instructions."""
    return instructions(DOCKERFILE.read_text())


def only(dockerfile: list[tuple[str, str]], keyword: str) -> str:
    """The arguments of the one ``keyword`` instruction."""
    (arguments,) = [args for key, args in dockerfile if key == keyword]
    return arguments


def image_env(dockerfile: list[tuple[str, str]]) -> dict[str, str]:
    """The image's ENV settings."""
    pairs = [token.split("=", 1) for key, args in dockerfile if key == "ENV" for token in shlex.split(args)]
    return dict(pairs)


@pytest.fixture(scope="module")
def image_config(dockerfile: list[tuple[str, str]]) -> ServerConfig:
    """What the server makes of the image's default CMD."""
    return parse_config(json.loads(only(dockerfile, "CMD")))


def test_entrypoint_runs_the_service(dockerfile: list[tuple[str, str]]) -> None:
    assert json.loads(only(dockerfile, "ENTRYPOINT")) == ["python", "-m", "service"]


def test_image_exposes_the_ports_the_cmd_binds(dockerfile: list[tuple[str, str]], image_config: ServerConfig) -> None:
    exposed = {int(port) for port in only(dockerfile, "EXPOSE").split()}
    assert image_config.host == "0.0.0.0"
    assert exposed == {image_config.port, image_config.metrics_port, image_config.health_port}


def test_server_directories_are_volumes(dockerfile: list[tuple[str, str]], image_config: ServerConfig) -> None:
    volumes = {Path(path) for path in json.loads(only(dockerfile, "VOLUME"))}
    env = image_env(dockerfile)
    assert {image_config.cache_dir, image_config.resolved_checkpoint_root, *image_config.model_roots} <= volumes
    for variable in ENGINE_CACHES + ("TANDEM_CACHE_DIR", "HF_HOME"):
        cache = Path(env[variable])
        assert volumes & {cache, *cache.parents}, f"{variable}={cache} is not on a volume"



def test_gpu_image_on_cuda_runtime_as_non_root(dockerfile: list[tuple[str, str]]) -> None:
    base = only(dockerfile, "FROM")
    defaults = dict(arg.split("=", 1) for key, arg in dockerfile if key == "ARG" and "=" in arg)
    image = defaults[base.strip("${}")] if base.startswith("$") else base
    assert image.startswith("nvidia/cuda:") and "-runtime-" in image
    assert only(dockerfile, "USER").split(":")[0] not in ("0", "root")
    installs = [args for key, args in dockerfile if key == "RUN" and "pip install" in args]
    assert any("./clients/python" in run and ".[gpu]" in run for run in installs)


def test_deployment_runs_the_image_with_the_same_ports_and_directories(kustomize: str, image_config: ServerConfig) -> None:
    for directory in KUSTOMIZATIONS.values():
        pod = parse_config(container_argv(load(render(kustomize, directory))))
        for setting in ("host", "port", "metrics_port", "health_port", "cache_dir", "checkpoint_root", "model_roots"):
            assert getattr(pod, setting) == getattr(image_config, setting), setting


def test_hadolint_finds_nothing() -> None:
    completed = subprocess.run([require_tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stdout + completed.stderr
