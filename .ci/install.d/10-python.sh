#!/usr/bin/env bash
# grpcio and the health client first: .ci/wait_ready.py polls the README's serve
# command while that command is still installing the rest. torch 2.13.0 first as
# well: where the machine has a CPU build of it on disk pip takes that one, which
# spares CI the CUDA wheels (the service accepts any torch >= 2.11).
set -euo pipefail
python -m pip install grpcio==1.85.3 grpcio-health-checking==1.85.1 torch==2.13.0
