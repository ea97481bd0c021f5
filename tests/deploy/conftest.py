"""Fixtures for the deploy checks: tools, kubeconform schemas, a real Prometheus."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

import pytest

from tests.deploy.prometheus import PrometheusProcess, start_prometheus
from tests.deploy.schemas import schema_locations, write_crd_schemas, write_kubernetes_schemas
from tests.support.server import ServerProcess, require_tool


@pytest.fixture(scope="session")
def kustomize() -> str:
    """The kustomize binary."""
    return require_tool("kustomize")


@pytest.fixture(scope="session")
def kubeconform_schemas(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """``-schema-location`` templates for the Kubernetes kinds and the ServiceMonitor CRD."""
    go = require_tool("go")
    if importlib.util.find_spec("kubernetes_validate") is None:  # the package that ships the schemas
        message = "kubernetes-validate is not installed (.ci/install.d/40-deploy.sh installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    root = tmp_path_factory.mktemp("kubeconform-schemas")
    return schema_locations(write_kubernetes_schemas(root / "kubernetes"), write_crd_schemas(go, root / "crds"))


@pytest.fixture(scope="module")
def prometheus(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusProcess]:
    """A real Prometheus scraping the module's server with deploy/prometheus/prometheus.yml."""
    binary = require_tool("prometheus")
    running = start_prometheus(binary, tmp_path_factory.mktemp("prometheus"), f"127.0.0.1:{server.metrics_port}")
    yield running
    running.stop()
