"""A request the engine refuses ends its own Generate at once; the service keeps serving and counts it.

Fault injection: the transformers engine accepts every request the controller
lets through, so its ``add_request`` is patched to refuse requests carrying a
marker seed. That needs the patch in the server's own process, so this module
runs the real server (``service.server.start_server``: interceptors, health,
metrics port) in the test's process on loopback and talks to it with the real
asyncio client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import tandem
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from tandem.aio import AsyncClient

from service import server as wiring
from service.config import ServerConfig
from service.errors import InvalidArgument
from service.runtime.engines.base import EngineRequest
from service.runtime.engines.transformers_engine import TransformersEngine
from tests.deploy.prometheus import fetch_exposition
from tests.support.server import SERVICE_NAME

REFUSED_SEED = 4242
"""Requests with this seed are refused by the patched engine; every other one is accepted."""
RUNNING = {"max_tokens": 48, "ignore_eos": True, "temperature": 0.0}


@pytest.fixture
async def running(tiny_cache: Path) -> AsyncIterator[wiring.RunningServer]:
    """The real server, in this process, on free loopback ports, with the tiny model loaded."""
    config = ServerConfig(host="127.0.0.1", port=0, metrics_port=0, cache_dir=tiny_cache, startup_model=None)
    server = await wiring.start_server(config)
    await wiring.load_startup_model(server, "tandem/tiny")
    yield server
    await server.shutdown(grace_seconds=1.0)


def refuse_marked_requests(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    """Injected fault: ``add_request`` raises ``error`` for a request seeded with REFUSED_SEED."""
    add_request = TransformersEngine.add_request

    def add_or_refuse(engine: TransformersEngine, request: EngineRequest) -> None:
        if request.sampling.seed == REFUSED_SEED:
            raise error
        add_request(engine, request)

    monkeypatch.setattr(TransformersEngine, "add_request", add_or_refuse)


def requests_counted(server: wiring.RunningServer, code: str) -> float:
    """tandem_requests_total{rpc="Generate", code=code} from the server's metrics port (0 before the first)."""
    exposition = fetch_exposition(f"http://127.0.0.1:{server.metrics_port}/metrics")
    samples = (s for family in text_string_to_metric_families(exposition) for s in family.samples)
    return sum(s.value for s in samples if s.name == "tandem_requests_total" and s.labels == {"rpc": "Generate", "code": code})


async def health(server: wiring.RunningServer) -> int:
    """The TandemService health status, asked over gRPC."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)
        return reply.status


@pytest.mark.parametrize(
    ("error", "code", "details"),
    [
        (InvalidArgument("prompts[0]", "longer than the engine's context"), "INVALID_ARGUMENT", "prompts[0]: longer than the engine's context"),
        (RuntimeError("CUDA error: an illegal memory access"), "INTERNAL", "the sampling engine failed: RuntimeError: CUDA error: an illegal memory access"),
    ],
    ids=["request-at-fault", "engine-at-fault"],
)
async def test_a_refused_generate_fails_within_a_second_and_others_run_on(running, monkeypatch, error, code, details) -> None:
    refuse_marked_requests(monkeypatch, error)
    async with AsyncClient(f"127.0.0.1:{running.port}") as client:
        other = client.generate_stream("The people", sampling={**RUNNING, "seed": 1})
        first = await anext(other)  # a call in flight while the refused one arrives
        sent = time.perf_counter()
        with pytest.raises(tandem.TandemError) as refused:
            # No deadline on the call (the client's default is minutes): before the fix it waited for ever.
            await asyncio.wait_for(client.generate("The people", sampling={**RUNNING, "seed": REFUSED_SEED}), timeout=10)
        assert time.perf_counter() - sent < 1.0
        assert (refused.value.code.name, refused.value.details) == (code, details)
        rest = [chunk async for chunk in other]
        assert sum(len(c.token_ids) for c in (first, *rest)) == RUNNING["max_tokens"]
        assert len((await client.generate("The people", sampling={**RUNNING, "seed": 2}))[0].token_ids) == RUNNING["max_tokens"]
    assert await health(running) == health_pb2.HealthCheckResponse.SERVING
    assert requests_counted(running, code) == 1
    assert requests_counted(running, "OK") == 2
