"""ghz, with the descriptor set the Python client ships, loads Generate on the real server.

16 calls at a time, a fixed count, each 32 new tokens on the tiny model: every
call must end OK, and the service must still be SERVING afterwards.
"""

from __future__ import annotations

from grpc_health.v1 import health_pb2

from tests.support.ghz import generate_data, run_ghz
from tests.support.server import ServerProcess, require_tool

CONCURRENCY = 16
CALLS = 160
MAX_TOKENS = 32


def test_generate_under_16_concurrent_ghz_calls_all_end_ok(server: ServerProcess) -> None:
    ghz = require_tool("ghz")
    run = run_ghz(ghz, server.address, CONCURRENCY, CALLS, generate_data(MAX_TOKENS))
    assert run.count == CALLS
    assert run.status_codes == {"OK": CALLS}, run.errors
    assert run.latency_seconds[99] > 0
    assert server.health() == health_pb2.HealthCheckResponse.SERVING
