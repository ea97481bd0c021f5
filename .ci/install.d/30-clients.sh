#!/usr/bin/env bash
# Go client: fetch the modules pinned by clients/go/go.sum (from the Go module proxy),
# so tests/clients/test_go_client.py spends its time building and testing, not downloading.
set -euo pipefail
cd "$(dirname "$0")/../../clients/go"
go mod download
