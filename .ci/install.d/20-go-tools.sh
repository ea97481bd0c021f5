#!/usr/bin/env bash
# Go tools: protoc plugins (stub freshness), grpcurl (README walk-through), buf (lint, via npm).
set -euo pipefail
go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.6
go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
go install github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.3
npm install --global --no-fund --no-audit @bufbuild/buf@1.50.0
