"""The contract: buf lint is clean and the committed generated code and descriptor set match the proto."""

import filecmp
import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool

from tests.support.server import REPO, require_tool

PROTOSET = "clients/python/src/tandem/v1/tandem.protoset"


def _differences(left: Path, right: Path) -> list[str]:
    assert left.is_dir() and right.is_dir(), f"missing {left if not left.is_dir() else right}"
    comparison = filecmp.dircmp(left, right, ignore=["__pycache__"])
    found = [str(right / n) for n in comparison.left_only + comparison.right_only + comparison.diff_files]
    for name in comparison.common_dirs:
        found += _differences(left / name, right / name)
    return found


def _regenerate(tmp_path: Path, *flags: str) -> None:
    subprocess.run([sys.executable, str(REPO / "tools" / "gen_stubs.py"), "--out", str(tmp_path), *flags], check=True)


def test_committed_python_stubs_and_protoset_are_fresh(tmp_path):
    _regenerate(tmp_path, "--python-only")
    stale = _differences(tmp_path / "clients/python/src/tandem/v1", REPO / "clients/python/src/tandem/v1")
    assert not stale, f"regenerate with `python tools/gen_stubs.py`: stale {stale}"


def test_committed_go_stubs_are_fresh(tmp_path):
    require_tool("protoc-gen-go")
    require_tool("protoc-gen-go-grpc")
    _regenerate(tmp_path)
    stale = _differences(tmp_path / "clients/go/gen", REPO / "clients/go/gen")
    assert not stale, f"regenerate with `python tools/gen_stubs.py`: stale {stale}"


def test_regenerating_the_protoset_is_byte_identical(tmp_path):
    _regenerate(tmp_path / "first", "--python-only")
    _regenerate(tmp_path / "second", "--python-only")
    assert (tmp_path / "first" / PROTOSET).read_bytes() == (tmp_path / "second" / PROTOSET).read_bytes()


def test_protoset_is_self_contained_and_keeps_comments():
    files = descriptor_pb2.FileDescriptorSet.FromString((REPO / PROTOSET).read_bytes()).file
    pool = descriptor_pool.DescriptorPool()
    for file in files:  # protoc writes each file after its imports; Add fails on a missing one
        pool.Add(file)
    generate = pool.FindMethodByName("tandem.v1.TandemService.Generate")
    assert generate.input_type.full_name == "tandem.v1.GenerateRequest" and generate.server_streaming
    assert any(location.leading_comments for file in files for location in file.source_code_info.location)


def test_buf_lint_is_clean():
    buf = require_tool("buf")
    result = subprocess.run([buf, "lint"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
