"""The Kubernetes manifests render, pass kubeconform's strict schemas, and agree with the server's CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.__main__ import parse_config
from service.config import ServerConfig
from tests.deploy.manifests import KUSTOMIZATIONS, container, container_argv, load, one_of_kind, render
from tests.support.server import SERVICE_NAME, require_tool

KINDS = {"ConfigMap", "Deployment", "PersistentVolumeClaim", "PodDisruptionBudget", "Service", "ServiceMonitor"}
DRAIN_MARGIN_SECONDS = 15  # after the drain: the device loop finishes its queue and the engine stops
STARTUP_BUDGET_SECONDS = {"base": 10 * 60, "gpu": 30 * 60}  # the tiny model on CPU; a GPU model with engine compilation


@pytest.fixture(scope="module", params=sorted(KUSTOMIZATIONS))
def variant(request: pytest.FixtureRequest) -> str:
    """The base or the GPU overlay."""
    return request.param


@pytest.fixture(scope="module")
def rendered(variant: str, kustomize: str) -> str:
    """``kustomize build`` of the variant."""
    return render(kustomize, KUSTOMIZATIONS[variant])


@pytest.fixture(scope="module")
def documents(rendered: str) -> list[dict[str, Any]]:
    """The rendered objects."""
    return load(rendered)


@pytest.fixture(scope="module")
def config(documents: list[dict[str, Any]]) -> ServerConfig:
    """What the server makes of the container's args."""
    return parse_config(container_argv(documents))


def kubeconform(manifests: str, schema_locations: list[str]) -> list[dict[str, Any]]:
    """kubeconform -strict on ``manifests``; one result per resource."""
    args = [require_tool("kubeconform"), "-strict", "-output", "json", "-verbose"]
    for location in schema_locations:
        args += ["-schema-location", location]
    completed = subprocess.run([*args, "-"], input=manifests, capture_output=True, text=True, timeout=120)
    assert completed.stdout.strip(), f"kubeconform printed nothing: {completed.stderr}"
    return json.loads(completed.stdout)["resources"]


def test_renders_every_kind_and_passes_strict_validation(rendered: str, kubeconform_schemas: list[str]) -> None:
    results = kubeconform(rendered, kubeconform_schemas)
    assert {r["kind"] for r in results} == KINDS
    assert [r for r in results if r["status"] != "statusValid"] == []


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_strict_validation_rejects_an_unknown_field(kind: str, kustomize: str, kubeconform_schemas: list[str]) -> None:
    """Every kind is checked against a schema, the ServiceMonitor CRD's included: a typo fails."""
    documents = load(render(kustomize, KUSTOMIZATIONS["base"]))
    target = one_of_kind(documents, kind)
    (target["spec"] if "spec" in target else target)["replicaz"] = 1
    results = kubeconform(yaml.safe_dump_all(documents), kubeconform_schemas)
    (result,) = [r for r in results if r["kind"] == kind]
    assert result["status"] == "statusInvalid"
    assert "replicaz" in result["msg"]


def test_only_the_gpu_overlay_requests_one_gpu(kustomize: str) -> None:
    base, gpu = (container(load(render(kustomize, KUSTOMIZATIONS[name])))["resources"] for name in ("base", "gpu"))
    assert "nvidia.com/gpu" not in base.get("requests", {}) and "nvidia.com/gpu" not in base.get("limits", {})
    assert gpu["requests"]["nvidia.com/gpu"] == 1 and gpu["limits"]["nvidia.com/gpu"] == 1


def test_container_args_are_valid_server_flags(documents: list[dict[str, Any]], config: ServerConfig) -> None:
    ports = {port["name"]: port["containerPort"] for port in container(documents)["ports"]}
    assert config.host == "0.0.0.0"
    assert ports == {"grpc": config.port, "metrics": config.metrics_port, "health": config.health_port}
    assert config.startup_model is not None, "the pod loads its model at start-up, so readiness can follow it"


def test_server_directories_are_mounted(documents: list[dict[str, Any]], config: ServerConfig) -> None:
    mounts = {Path(mount["mountPath"]) for mount in container(documents)["volumeMounts"]}
    assert {config.cache_dir, config.resolved_checkpoint_root, *config.model_roots} <= mounts
    claims = [v["persistentVolumeClaim"]["claimName"] for v in one_of_kind(documents, "Deployment")["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [one_of_kind(documents, "PersistentVolumeClaim")["metadata"]["name"]]


def test_probes_are_grpc_health_checks_on_the_health_port(documents: list[dict[str, Any]], config: ServerConfig) -> None:
    spec = container(documents)
    for probe, service in (("startupProbe", SERVICE_NAME), ("readinessProbe", SERVICE_NAME), ("livenessProbe", "")):
        assert spec[probe]["grpc"]["port"] == config.health_port
        assert spec[probe]["grpc"].get("service", "") == service, probe


def test_startup_budget_allows_for_loading_the_model(variant: str, documents: list[dict[str, Any]]) -> None:
    startup = container(documents)["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= STARTUP_BUDGET_SECONDS[variant]


def test_termination_grace_covers_the_drain(documents: list[dict[str, Any]], config: ServerConfig) -> None:
    pod = one_of_kind(documents, "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= config.grace_seconds + DRAIN_MARGIN_SECONDS


def test_service_monitor_and_selectors_reach_the_pod(documents: list[dict[str, Any]]) -> None:
    pod_labels = one_of_kind(documents, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = one_of_kind(documents, "Service")
    container_ports = {port["name"] for port in container(documents)["ports"]}
    for selector in (service["spec"]["selector"], one_of_kind(documents, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= pod_labels.items()
    assert {port["name"]: port["targetPort"] for port in service["spec"]["ports"]} == {"grpc": "grpc", "metrics": "metrics"}
    assert {"grpc", "metrics"} <= container_ports
    monitor = one_of_kind(documents, "ServiceMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [endpoint["port"] for endpoint in monitor["endpoints"]] == ["metrics"]
