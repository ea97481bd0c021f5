"""max_queued_generations holds under a burst: never more samples admitted than the limit, refusals at once, nothing lost.

The burst samples from a saved adapter on its first use, where admission
waits for the adapter to load: before the fix, every call of a burst passed
the limit check before any of them counted its samples.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from tandem.v1 import tandem_pb2 as pb
from tandem.v1 import tandem_pb2_grpc
from tests.support.server import start_server

LIMIT = 4
CALLS = 4 * LIMIT
GAUGE = re.compile(r"^tandem_generation_samples (\S+)$", re.MULTILINE)


def sample_gauge(metrics_url: str, stop: threading.Event, seen: list[float]) -> None:
    """Read the admitted-samples gauge as fast as the server answers until ``stop``."""
    while not stop.is_set():
        body = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
        seen.append(float(GAUGE.search(body).group(1)))


async def one_call(stub, index: int) -> tuple[str, float, int]:
    """(status name, seconds to the outcome, tokens received) of one Generate from the saved adapter."""
    request = pb.GenerateRequest(prompts=[pb.Prompt(text=f"The people {index}")], sampling=pb.SamplingParams(max_tokens=8, ignore_eos=True), adapter="ckpt")
    started = time.perf_counter()
    tokens = 0
    try:
        async for reply in stub.Generate(request, timeout=120):
            tokens += len(reply.token_ids)
    except grpc.aio.AioRpcError as error:
        assert "max_queued_generations=4" in error.details() and "retry" in error.details(), error.details()
        return error.code().name, time.perf_counter() - started, tokens
    return "OK", time.perf_counter() - started, tokens


@pytest.mark.timeout(240)
def test_a_burst_never_admits_more_samples_than_the_limit(tiny_cache: Path, tmp_path: Path) -> None:
    server = start_server(tiny_cache, tmp_path, "--max-queued-generations", str(LIMIT), "--checkpoint-root", str(tmp_path / "adapters"))
    try:
        with grpc.insecure_channel(server.address) as channel:
            tandem_pb2_grpc.TandemServiceStub(channel).SaveAdapter(pb.SaveAdapterRequest(name="ckpt"), timeout=60)

        async def burst() -> list[tuple[str, float, int]]:
            async with grpc.aio.insecure_channel(server.address) as channel:
                stub = tandem_pb2_grpc.TandemServiceStub(channel)
                return await asyncio.gather(*(one_call(stub, i) for i in range(CALLS)))

        stop, seen = threading.Event(), []
        sampler = threading.Thread(target=sample_gauge, args=(server.metrics_url, stop, seen))
        sampler.start()
        try:
            outcomes = asyncio.run(burst())
        finally:
            stop.set()
            sampler.join()
        accepted = [o for o in outcomes if o[0] == "OK"]
        refused = [o for o in outcomes if o[0] != "OK"]
        assert seen and max(seen) <= LIMIT, f"admitted samples peaked at {max(seen)} over max_queued_generations={LIMIT}"
        assert max(seen) >= 1, "the sampler never saw the burst"
        assert {o[0] for o in refused} <= {"RESOURCE_EXHAUSTED"}
        assert refused, f"{CALLS} one-sample calls against a limit of {LIMIT}: some must be refused"
        assert all(o[1] < 1.0 and o[2] == 0 for o in refused), "a refusal comes at once, before any sample"
        assert all(o[2] == 8 for o in accepted), "every accepted call gets all of its tokens"
        assert len(accepted) >= LIMIT
        assert server.health() == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop()
