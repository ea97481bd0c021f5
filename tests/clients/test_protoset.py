"""The descriptor set ships inside the client package, and a tool can use it where reflection is off."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

import pytest

from tests.support.server import REPO, ServerProcess, require_tool

PACKAGED_PATH = "tandem/v1/tandem.protoset"


@pytest.fixture(scope="module")
def server_flags() -> tuple[str, ...]:
    """Reflection off: tools must bring the schema themselves."""
    return ("--no-reflection",)


def test_the_client_wheel_ships_the_protoset(tmp_path: Path) -> None:
    source = tmp_path / "client"
    shutil.copytree(REPO / "clients/python", source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(tmp_path / "dist"), str(source)]
    subprocess.run(command, check=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("tandem_client-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read(PACKAGED_PATH) == (source / "src" / PACKAGED_PATH).read_bytes()


def test_grpcurl_describes_and_calls_with_the_installed_protoset_where_reflection_is_off(server: ServerProcess) -> None:
    grpcurl = require_tool("grpcurl")
    with resources.as_file(resources.files("tandem.v1") / "tandem.protoset") as protoset:
        base = [grpcurl, "-plaintext", "-protoset", str(protoset)]
        described = subprocess.run([*base, "describe", "tandem.v1.TandemService.Generate"], capture_output=True, text=True, timeout=60)
        called = subprocess.run(
            [*base, "-d", "{}", server.address, "tandem.v1.TandemService/GetModel"], capture_output=True, text=True, timeout=60
        )
    assert described.returncode == 0, described.stderr
    assert "rpc Generate ( .tandem.v1.GenerateRequest ) returns ( stream .tandem.v1.GenerateResponse );" in described.stdout
    assert "//" in described.stdout, "the protoset keeps the proto's comments"
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout)["loaded"] is True
