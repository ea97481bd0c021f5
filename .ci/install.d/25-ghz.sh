#!/usr/bin/env bash
# ghz, the gRPC load tester: tests/clients/test_ghz_load.py and tests/bench/ghz_bench.py
# run it with the client's tandem.protoset (its own .proto parser predates proto3 optional).
set -euo pipefail
go install github.com/bojand/ghz/cmd/ghz@v0.120.0
