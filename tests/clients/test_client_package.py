"""The tandem-client distribution: grpcio and protobuf only, no torch, a typed package."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata, resources

from packaging.requirements import Requirement


def test_depends_on_grpcio_and_protobuf_only() -> None:
    requirements = {Requirement(line).name for line in metadata.requires("tandem-client") or []}
    assert requirements == {"grpcio", "protobuf"}


def test_importing_the_client_and_cli_loads_no_torch() -> None:
    code = "import sys, tandem, tandem.aio, tandem.cli; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'service')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


def test_console_script_and_type_marker_are_installed() -> None:
    scripts = {entry.name: entry.value for entry in metadata.entry_points(group="console_scripts")}
    assert scripts.get("tandem") == "tandem.cli:main"
    assert resources.files("tandem").joinpath("py.typed").is_file()
    assert resources.files("tandem.v1").joinpath("tandem_pb2.pyi").is_file()
