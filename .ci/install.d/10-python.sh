#!/usr/bin/env bash
# grpcio and the health client first: .ci/wait_ready.py polls the README's serve
# command while that command is still installing the rest.
set -euo pipefail
python -m pip install grpcio==1.85.3 grpcio-health-checking==1.85.1
