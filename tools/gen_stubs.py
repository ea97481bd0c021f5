"""Generate the Python and Go stubs and the descriptor set from proto/ (the one generation command).

    python tools/gen_stubs.py            # writes into the repository
    python tools/gen_stubs.py --out DIR  # writes under DIR (the staleness test)

Python stubs go to clients/python/src/ (package ``tandem.v1``), beside them
``tandem.protoset``: every file with its imports and comments, for tools that
take a descriptor set because their parser predates proto3 ``optional`` (ghz).
Go stubs go to clients/go/gen/. Go generation needs protoc-gen-go and
protoc-gen-go-grpc on PATH; ``--python-only`` skips it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "proto"
PYTHON_OUT = Path("clients/python/src")
PROTOSET = PYTHON_OUT / "tandem/v1/tandem.protoset"
GO_OUT = Path("clients/go/gen")
GO_MODULE_PREFIX = "github.com/tandem-ai/tandem/clients/go/gen"


def proto_files() -> list[str]:
    """Every .proto under proto/, relative to it."""
    return sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))


def run_protoc(args: list[str]) -> None:
    """Run the protoc bundled with grpcio-tools, failing loudly."""
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    code = protoc.main(["protoc", f"-I{PROTO_ROOT}", f"-I{include}", *args, *proto_files()])
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")


def generate_python(out_root: Path) -> None:
    """Write tandem/v1/*_pb2.py, *_pb2.pyi and *_pb2_grpc.py."""
    out = out_root / PYTHON_OUT
    out.mkdir(parents=True, exist_ok=True)
    run_protoc([f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}"])
    for package in {p.parent for p in (out / "tandem").rglob("*_pb2.py")}:
        (package / "__init__.py").touch()


def generate_protoset(out_root: Path) -> None:
    """Write the FileDescriptorSet of proto/ with its imports and source comments (shipped with the Python client)."""
    out = out_root / PROTOSET
    out.parent.mkdir(parents=True, exist_ok=True)
    run_protoc(["--include_imports", "--include_source_info", f"--descriptor_set_out={out}"])


def generate_go(out_root: Path) -> None:
    """Write the Go message and service stubs."""
    for plugin in ("protoc-gen-go", "protoc-gen-go-grpc"):
        if shutil.which(plugin) is None:
            raise SystemExit(f"{plugin} is not on PATH (go install it, or pass --python-only)")
    out = out_root / GO_OUT
    out.mkdir(parents=True, exist_ok=True)
    run_protoc(
        [
            f"--go_out={out}",
            f"--go_opt=module={GO_MODULE_PREFIX}",
            f"--go-grpc_out={out}",
            f"--go-grpc_opt=module={GO_MODULE_PREFIX}",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO, help="root to write under (default: the repository)")
    parser.add_argument("--python-only", action="store_true", help="skip the Go stubs")
    args = parser.parse_args(argv)
    generate_python(args.out)
    generate_protoset(args.out)
    if not args.python_only:
        generate_go(args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
