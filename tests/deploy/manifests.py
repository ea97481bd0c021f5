"""Render the kustomize trees and read what the pod will run."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support.server import REPO

K8S = REPO / "deploy" / "k8s"
KUSTOMIZATIONS = {"base": K8S / "base", "gpu": K8S / "overlays" / "gpu"}
"""One pod holding the model: a Deployment of one."""
SCALE_OUT = K8S / "overlays" / "scale-out"
"""A trainer StatefulSet and a sampler Deployment (docs/deploy.md)."""
WORKLOAD_KINDS = ("Deployment", "StatefulSet")
_VARIABLE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def render(kustomize: str, directory: Path) -> str:
    """``kustomize build`` output."""
    return subprocess.run([kustomize, "build", str(directory)], check=True, capture_output=True, text=True, timeout=120).stdout


def one_of_kind(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The single rendered object of ``kind``."""
    (found,) = [doc for doc in documents if doc["kind"] == kind]
    return found


def workloads(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rendered Deployments and StatefulSets."""
    return [doc for doc in documents if doc["kind"] in WORKLOAD_KINDS]


def container(documents: list[dict[str, Any]], workload: dict[str, Any] | None = None) -> dict[str, Any]:
    """The one container of ``workload`` (default: the one Deployment)."""
    (only,) = (workload or one_of_kind(documents, "Deployment"))["spec"]["template"]["spec"]["containers"]
    return only


def container_argv(documents: list[dict[str, Any]], workload: dict[str, Any] | None = None) -> list[str]:
    """The container's args with ``$(VAR)`` expanded the way the kubelet does, from its
    ConfigMap ``envFrom`` and literal ``env`` values; an undefined variable is an error."""
    spec = container(documents, workload)
    configmaps = {doc["metadata"]["name"]: doc.get("data", {}) for doc in documents if doc["kind"] == "ConfigMap"}
    environment: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        environment.update(configmaps[source["configMapRef"]["name"]])
    environment.update({var["name"]: var["value"] for var in spec.get("env", []) if "value" in var})

    def expand(match: re.Match[str]) -> str:
        if match.group(1) not in environment:
            raise KeyError(f"container args use $({match.group(1)}), which no ConfigMap or env entry defines")
        return environment[match.group(1)]

    return [_VARIABLE.sub(expand, arg) for arg in spec["args"]]


def load(rendered: str) -> list[dict[str, Any]]:
    """Rendered YAML as objects."""
    return [doc for doc in yaml.safe_load_all(rendered) if doc]
