"""LoadModel resolves names only under the server's --model-root, never runs a model's own code,
and a refused LoadModel leaves the loaded model serving."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import grpc
import pytest
from tandem.v1 import tandem_pb2 as pb

from service.tiny_model import ensure_builtin_model
MARKER = "remote-code-ran"


def _with_remote_code(model: Path, marker: Path, model_type: str) -> None:
    """Give a model directory an auto_map to a module that leaves ``marker`` when imported."""
    config = json.loads((model / "config.json").read_text())
    config.update(model_type=model_type, auto_map={"AutoConfig": "custom.Config", "AutoModelForCausalLM": "custom.Model"})
    (model / "config.json").write_text(json.dumps(config))
    (model / "custom.py").write_text(f"open({str(marker)!r}, 'w').close()\nfrom transformers import LlamaConfig as Config, LlamaForCausalLM as Model\n")


@pytest.fixture(scope="module")
def roots(tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """<base>/root: good, escape -> <base>/outside, remote-code, known-type-with-auto-map; <base>/outside/model."""
    tiny = ensure_builtin_model("tandem/tiny", tiny_cache)
    base = tmp_path_factory.mktemp("model-roots")
    root, outside = base / "root", base / "outside"
    root.mkdir()
    shutil.copytree(tiny, root / "good")
    shutil.copytree(tiny, outside / "model")
    (root / "escape").symlink_to(outside)
    shutil.copytree(tiny, root / "remote-code")
    _with_remote_code(root / "remote-code", base / MARKER, model_type="custom_llama")
    shutil.copytree(tiny, root / "known-type-with-auto-map")
    _with_remote_code(root / "known-type-with-auto-map", base / MARKER, model_type="llama")
    return base


@pytest.fixture(scope="module")
def server_flags(roots: Path) -> tuple[str, ...]:
    """This module's server resolves model names under <roots>/root."""
    return ("--model-root", str(roots / "root"))


def _load(stub, name: str) -> pb.ModelInfo:
    events = list(stub.LoadModel(pb.LoadModelRequest(model_name=name, max_seq_length=256), timeout=120))
    return events[-1].model


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("../outside/model", grpc.StatusCode.INVALID_ARGUMENT),
        ("good/../../outside/model", grpc.StatusCode.INVALID_ARGUMENT),
        ("escape/model", grpc.StatusCode.INVALID_ARGUMENT),
        ("{outside}/model", grpc.StatusCode.INVALID_ARGUMENT),
        ("remote-code", grpc.StatusCode.INVALID_ARGUMENT),
        ("missing", grpc.StatusCode.NOT_FOUND),
    ],
    ids=["dotdot", "dotdot-inside", "symlink-escape", "absolute", "remote-code", "missing"],
)
def test_refused_names_leave_the_loaded_model_serving(stub, roots: Path, name: str, code: grpc.StatusCode) -> None:
    name = name.replace("{outside}", str(roots / "outside"))
    server_paths = str(roots) if not name.startswith("/") else str(roots / "root")  # an absolute name is echoed back
    before = stub.GetModel(pb.GetModelRequest()).model
    with pytest.raises(grpc.RpcError) as error:
        _load(stub, name)
    assert error.value.code() == code
    assert "model_name" in error.value.details() or code == grpc.StatusCode.NOT_FOUND
    assert server_paths not in error.value.details()
    after = stub.GetModel(pb.GetModelRequest()).model
    assert after.model_name == before.model_name and after.adapter_version == before.adapter_version
    assert not (roots / MARKER).exists()


def test_names_under_the_root_load(stub) -> None:
    assert _load(stub, "good").model_name == "good"


def test_an_auto_map_beside_a_known_architecture_loads_the_builtin_class_without_running_code(stub, roots: Path) -> None:
    assert _load(stub, "known-type-with-auto-map").model_name == "known-type-with-auto-map"
    assert not (roots / MARKER).exists()
