"""JSON schemas for kubeconform, built offline from packages on allowed registries.

- Kubernetes kinds: the strict schemas shipped in the PyPI package
  ``kubernetes-validate``. Each kind's file refers to a shared
  ``/api/_definitions.json`` under an https ``$id``; the copies drop the ``$id``
  and make those references file-relative, so kubeconform resolves them on disk.
- ServiceMonitor: the prometheus-operator CRD from its Go module (through the Go
  module proxy), its ``openAPIV3Schema`` made strict (no unknown fields) the way
  kubeconform's own CRD converter does.

:func:`schema_locations` returns the two ``-schema-location`` templates.
"""

from __future__ import annotations

import json
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

KUBERNETES_VERSION = "1.34.0"
PROMETHEUS_OPERATOR_MODULE = "github.com/prometheus-operator/prometheus-operator@v0.85.0"
SERVICEMONITOR_CRD = "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml"
_SHARED_DEFINITIONS = "/api/_definitions.json"


def _file_relative(node: Any) -> Any:
    """The schema with shared-definition references made relative to its own file."""
    if isinstance(node, dict):
        return {
            key: value.replace(_SHARED_DEFINITIONS, "_definitions.json", 1) if key == "$ref" and isinstance(value, str) else _file_relative(value)
            for key, value in node.items()
            if key != "$id"
        }
    if isinstance(node, list):
        return [_file_relative(item) for item in node]
    return node


def write_kubernetes_schemas(destination: Path) -> Path:
    """Copy the strict Kubernetes schemas into ``destination``; returns it."""
    source = resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{KUBERNETES_VERSION}-local-strict"
    destination.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        if entry.name.endswith(".json"):
            (destination / entry.name).write_text(json.dumps(_file_relative(json.loads(entry.read_text()))))
    return destination


def _strict(node: Any) -> Any:
    """An OpenAPI v3 schema where objects with declared properties reject others."""
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    strict = {key: _strict(value) for key, value in node.items()}
    if "properties" in strict and "additionalProperties" not in strict and not strict.get("x-kubernetes-preserve-unknown-fields"):
        strict["additionalProperties"] = False
    return strict


def _go_module_dir(go: str, module: str) -> Path:
    """Where ``go mod download`` put ``module`` (downloading it through the Go proxy if needed)."""
    completed = subprocess.run([go, "mod", "download", "-json", module], check=True, capture_output=True, text=True, timeout=300)
    return Path(json.loads(completed.stdout)["Dir"])


def write_crd_schemas(go: str, destination: Path) -> Path:
    """Write ``<group>/<kind>_<version>.json`` for every version of the ServiceMonitor CRD; returns ``destination``."""
    crd = yaml.safe_load((_go_module_dir(go, PROMETHEUS_OPERATOR_MODULE) / SERVICEMONITOR_CRD).read_text())
    group_dir = destination / crd["spec"]["group"]
    group_dir.mkdir(parents=True, exist_ok=True)
    kind = crd["spec"]["names"]["kind"].lower()
    for version in crd["spec"]["versions"]:
        schema = _strict(version["schema"]["openAPIV3Schema"])
        (group_dir / f"{kind}_{version['name']}.json").write_text(json.dumps(schema))
    return destination


def schema_locations(kubernetes_dir: Path, crd_dir: Path) -> list[str]:
    """kubeconform ``-schema-location`` templates: Kubernetes kinds first, then CRDs by group."""
    return [
        f"{kubernetes_dir}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json",
        f"{crd_dir}/{{{{ .Group }}}}/{{{{ .ResourceKind }}}}_{{{{ .ResourceAPIVersion }}}}.json",
    ]
