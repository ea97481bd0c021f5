"""Wait until a Tandem server reports its service SERVING: wait_ready.py HOST:PORT TIMEOUT_SECONDS."""

import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

address, timeout = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="tandem.v1.TandemService"), timeout=2)
        if reply.status == health_pb2.HealthCheckResponse.SERVING:
            print(f"{address} is SERVING")
            sys.exit(0)
    except grpc.RpcError:
        pass
    time.sleep(0.5)
sys.exit(f"{address} was not SERVING within {timeout} s")
