"""The Kubernetes manifests render, pass kubeconform's strict schemas, and agree with the server's CLI.

Three variants: the base and the GPU overlay (one pod holding the model) and
the scale-out overlay (a trainer StatefulSet and a sampler Deployment). Checks
about a pod hold for every workload of a variant.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.__main__ import parse_config
from service.config import Role, ServerConfig
from tests.deploy.manifests import KUSTOMIZATIONS, SCALE_OUT, container, container_argv, load, one_of_kind, render, workloads
from tests.support.server import SERVICE_NAME, require_tool

VARIANTS = {**KUSTOMIZATIONS, "scale-out": SCALE_OUT}
ONE_POD_KINDS = {"ConfigMap", "Deployment", "PersistentVolumeClaim", "PodDisruptionBudget", "Service", "ServiceMonitor"}
KINDS = {"base": ONE_POD_KINDS, "gpu": ONE_POD_KINDS, "scale-out": ONE_POD_KINDS | {"StatefulSet"}}
GPUS_PER_POD = {"base": 0, "gpu": 1, "scale-out": 1}
DRAIN_MARGIN_SECONDS = 15  # after the drain: the device loop finishes its queue and the engine stops
STARTUP_BUDGET_SECONDS = {"base": 10 * 60, "gpu": 30 * 60, "scale-out": 30 * 60}  # the tiny model on CPU; a GPU model with engine compilation


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request: pytest.FixtureRequest) -> str:
    """The base, the GPU overlay or the scale-out overlay."""
    return request.param


@pytest.fixture(scope="module")
def rendered(variant: str, kustomize: str) -> str:
    """``kustomize build`` of the variant."""
    return render(kustomize, VARIANTS[variant])


@pytest.fixture(scope="module")
def documents(rendered: str) -> list[dict[str, Any]]:
    """The rendered objects."""
    return load(rendered)


@pytest.fixture(scope="module")
def scale_out(kustomize: str) -> list[dict[str, Any]]:
    """The scale-out overlay's objects."""
    return load(render(kustomize, SCALE_OUT))


def configs(documents: list[dict[str, Any]]) -> list[tuple[dict[str, Any], ServerConfig]]:
    """Each workload with what the server makes of its container's args."""
    return [(workload, parse_config(container_argv(documents, workload))) for workload in workloads(documents)]


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    """The labels of the workload's pods."""
    return workload["spec"]["template"]["metadata"]["labels"]


def selecting(documents: list[dict[str, Any]], kind: str, workload: dict[str, Any]) -> list[dict[str, Any]]:
    """The objects of ``kind`` whose selector matches the workload's pods."""
    found = []
    for doc in documents:
        if doc["kind"] == kind:
            selector = doc["spec"]["selector"]
            selector = selector.get("matchLabels", selector) if kind == "PodDisruptionBudget" else selector
            if selector.items() <= pod_labels(workload).items():
                found.append(doc)
    return found


def kubeconform(manifests: str, schema_locations: list[str]) -> list[dict[str, Any]]:
    """kubeconform -strict on ``manifests``; one result per resource."""
    args = [require_tool("kubeconform"), "-strict", "-output", "json", "-verbose"]
    for location in schema_locations:
        args += ["-schema-location", location]
    completed = subprocess.run([*args, "-"], input=manifests, capture_output=True, text=True, timeout=120)
    assert completed.stdout.strip(), f"kubeconform printed nothing: {completed.stderr}"
    return json.loads(completed.stdout)["resources"]


def test_renders_every_kind_and_passes_strict_validation(variant: str, rendered: str, kubeconform_schemas: list[str]) -> None:
    results = kubeconform(rendered, kubeconform_schemas)
    assert {r["kind"] for r in results} == KINDS[variant]
    assert [r for r in results if r["status"] != "statusValid"] == []


@pytest.mark.parametrize(("variant_name", "kind"), [("base", kind) for kind in sorted(ONE_POD_KINDS)] + [("scale-out", "StatefulSet")])
def test_strict_validation_rejects_an_unknown_field(variant_name: str, kind: str, kustomize: str, kubeconform_schemas: list[str]) -> None:
    """Every kind is checked against a schema, the ServiceMonitor CRD's included: a typo fails."""
    documents = load(render(kustomize, VARIANTS[variant_name]))
    target = one_of_kind(documents, kind)
    (target["spec"] if "spec" in target else target)["replicaz"] = 1
    results = kubeconform(yaml.safe_dump_all(documents), kubeconform_schemas)
    (result,) = [r for r in results if r["kind"] == kind and r["name"] == target["metadata"]["name"]]
    assert result["status"] == "statusInvalid"
    assert "replicaz" in result["msg"]


def test_gpu_variants_request_one_gpu_per_pod(variant: str, documents: list[dict[str, Any]]) -> None:
    for workload in workloads(documents):
        resources = container(documents, workload)["resources"]
        for bound in ("requests", "limits"):
            assert resources.get(bound, {}).get("nvidia.com/gpu", 0) == GPUS_PER_POD[variant], (workload["metadata"]["name"], bound)


def test_container_args_are_valid_server_flags(documents: list[dict[str, Any]]) -> None:
    for workload, config in configs(documents):
        ports = {port["name"]: port["containerPort"] for port in container(documents, workload)["ports"]}
        assert config.host == "0.0.0.0"
        assert ports == {"grpc": config.port, "metrics": config.metrics_port, "health": config.health_port}
        assert config.startup_model is not None, "the pod loads its model at start-up, so readiness can follow it"


def test_server_directories_are_mounted_from_declared_volumes(documents: list[dict[str, Any]]) -> None:
    claims = {doc["metadata"]["name"] for doc in documents if doc["kind"] == "PersistentVolumeClaim"}
    for workload, config in configs(documents):
        mounts = container(documents, workload)["volumeMounts"]
        directories = {config.cache_dir, config.resolved_checkpoint_root, *config.model_roots}
        directories |= {config.adapter_store} if config.adapter_store is not None else set()
        assert directories <= {Path(mount["mountPath"]) for mount in mounts}
        volumes = {volume["name"]: volume for volume in workload["spec"]["template"]["spec"]["volumes"]}
        volumes |= {template["metadata"]["name"]: template for template in workload["spec"].get("volumeClaimTemplates", [])}
        assert {mount["name"] for mount in mounts} <= volumes.keys()
        assert {v["persistentVolumeClaim"]["claimName"] for v in volumes.values() if "persistentVolumeClaim" in v} <= claims


def test_probes_are_grpc_health_checks_on_the_health_port(documents: list[dict[str, Any]]) -> None:
    for workload, config in configs(documents):
        spec = container(documents, workload)
        for probe, service in (("startupProbe", SERVICE_NAME), ("readinessProbe", SERVICE_NAME), ("livenessProbe", "")):
            assert spec[probe]["grpc"]["port"] == config.health_port
            assert spec[probe]["grpc"].get("service", "") == service, probe


def test_startup_budget_allows_for_loading_the_model(variant: str, documents: list[dict[str, Any]]) -> None:
    for workload in workloads(documents):
        startup = container(documents, workload)["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= STARTUP_BUDGET_SECONDS[variant]


def test_termination_grace_covers_the_drain(documents: list[dict[str, Any]]) -> None:
    for workload, config in configs(documents):
        assert workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= config.grace_seconds + DRAIN_MARGIN_SECONDS


def test_service_monitor_and_selectors_reach_each_pod(documents: list[dict[str, Any]]) -> None:
    monitor = one_of_kind(documents, "ServiceMonitor")["spec"]
    assert [endpoint["port"] for endpoint in monitor["endpoints"]] == ["metrics"]
    for workload in workloads(documents):
        (service,) = selecting(documents, "Service", workload)
        (budget,) = selecting(documents, "PodDisruptionBudget", workload)
        assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
        assert {port["name"]: port["targetPort"] for port in service["spec"]["ports"]} == {"grpc": "grpc", "metrics": "metrics"}
        assert {"grpc", "metrics"} <= {port["name"] for port in container(documents, workload)["ports"]}
        assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items(), f"{service['metadata']['name']} is scraped"


def test_scale_out_is_one_trainer_and_sampler_replicas_on_one_shared_store(scale_out: list[dict[str, Any]]) -> None:
    trainer = one_of_kind(scale_out, "StatefulSet")
    samplers = one_of_kind(scale_out, "Deployment")
    roles = {workload["kind"]: config for workload, config in configs(scale_out)}
    assert (trainer["spec"]["replicas"], roles["StatefulSet"].role) == (1, Role.TRAINER)
    assert samplers["spec"]["replicas"] >= 2 and roles["Deployment"].role == Role.SAMPLER
    assert roles["StatefulSet"].adapter_store == roles["Deployment"].adapter_store is not None

    def store_volume(workload: dict[str, Any], config: ServerConfig) -> tuple[str, str]:
        (mount,) = [m for m in container(scale_out, workload)["volumeMounts"] if Path(m["mountPath"]) == config.adapter_store]
        (volume,) = [v for v in workload["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
        assert not mount.get("readOnly"), "the trainer writes the store"
        return volume["persistentVolumeClaim"]["claimName"], mount["subPath"]

    claim, subpath = store_volume(trainer, roles["StatefulSet"])
    assert store_volume(samplers, roles["Deployment"]) == (claim, subpath), "one store, mounted alike"
    (pvc,) = [doc for doc in scale_out if doc["kind"] == "PersistentVolumeClaim" and doc["metadata"]["name"] == claim]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_scale_out_services_let_clients_balance_samplers_and_find_the_trainer(scale_out: list[dict[str, Any]]) -> None:
    trainer = one_of_kind(scale_out, "StatefulSet")
    samplers = one_of_kind(scale_out, "Deployment")
    (trainer_service,) = selecting(scale_out, "Service", trainer)
    (sampler_service,) = selecting(scale_out, "Service", samplers)
    assert trainer["spec"]["serviceName"] == trainer_service["metadata"]["name"]
    assert sampler_service["spec"]["clusterIP"] == "None", "headless: dns:/// resolves to every ready sampler, for round_robin"
    assert sampler_service not in selecting(scale_out, "Service", trainer), "sampling never lands on the trainer"
    host, port = parse_config(container_argv(scale_out, samplers)).trainer_address.rsplit(":", 1)
    grpc_port = {p["name"]: p["port"] for p in trainer_service["spec"]["ports"]}["grpc"]
    assert (host, int(port)) == (trainer_service["metadata"]["name"], grpc_port), "samplers name the trainer's Service"
    (budget,) = selecting(scale_out, "PodDisruptionBudget", samplers)
    assert budget["spec"]["maxUnavailable"] >= 1, "a drain may take a sampler while the others serve"
    monitor = one_of_kind(scale_out, "ServiceMonitor")["spec"]
    assert {service["metadata"]["labels"][monitor["jobLabel"]] for service in (trainer_service, sampler_service)} == {"tandem"}, 'job="tandem" for both, as the alerts expect'
