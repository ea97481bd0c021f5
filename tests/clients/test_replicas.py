"""Sampler replicas: calls spread over them, and UNAVAILABLE on one is retried on another.

Real servers (``python -m service``, role ``both``) on loopback; a replica is
killed with SIGKILL, as a node failure would, while a call is on it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import tandem
from tandem.routing import parse_samplers
from tests.clients.helpers import eventually, metric, sampling, start_servers
from tests.clients.test_retries_and_codes import RetryLog, free_port
from tests.support.server import ServerProcess

SHORT = {"max_tokens": 4, "temperature": 0}
LONG = {"max_tokens": 300, "ignore_eos": True, "temperature": 0}
"""A second or more of decoding on the tiny model: long enough to kill its server part-way."""

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def pool(tiny_cache: Path, server_logs: Path) -> Iterator[list[ServerProcess]]:
    """Two servers shared by the module; a test may kill one, and the next test gets a new one in its place."""
    servers = start_servers(2, tiny_cache, server_logs)
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def replicas(pool: list[ServerProcess], tiny_cache: Path, server_logs: Path) -> list[ServerProcess]:
    """The pool's two servers, both running: any killed by an earlier test is replaced."""
    pool[:] = [server if server.process.poll() is None else start_servers(1, tiny_cache, server_logs)[0] for server in pool]
    return pool


def generate_calls(server: ServerProcess) -> float:
    """Generate calls the server finished with OK."""
    return metric(server, "tandem_requests_total", rpc="Generate", code="OK")


def kill_while_sampling(servers: list[ServerProcess]) -> ServerProcess:
    """SIGKILL the one server decoding a call, once it has generated some tokens; the other is left."""
    assert eventually(lambda: len(sampling(servers)) == 1, timeout=30), "one replica takes the call"
    (busy,) = sampling(servers)
    generated = metric(busy, "tandem_generated_tokens_total")
    assert eventually(lambda: metric(busy, "tandem_generated_tokens_total") >= generated + 20, timeout=30)
    busy.stop(signal.SIGKILL)
    return busy


def test_sampler_flag_is_a_target_or_a_list() -> None:
    assert parse_samplers("dns:///tandem-sampler:50051") == "dns:///tandem-sampler:50051"
    assert parse_samplers("ipv4:///10.0.0.1:1,10.0.0.2:1") == "ipv4:///10.0.0.1:1,10.0.0.2:1"
    assert parse_samplers("a:1, b:2,") == ("a:1", "b:2")
    with pytest.raises(ValueError):
        parse_samplers(" , ")
    with pytest.raises(ValueError, match="samplers"):
        tandem.Client("127.0.0.1:1", samplers=[])


@pytest.mark.parametrize("asyncio_client", [False, True], ids=["sync", "asyncio"])
async def test_a_retry_goes_to_the_next_address_at_once_and_waits_once_all_failed(asyncio_client: bool) -> None:
    """Nothing listens on either address: attempts alternate, and only every second retry waits."""
    retries = RetryLog()
    policy = tandem.RetryPolicy(max_attempts=5, initial_backoff=0.1, multiplier=2.0, on_retry=retries)
    samplers = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    if asyncio_client:
        async with tandem.AsyncClient(samplers[0], samplers=samplers, retry=policy) as client:
            with pytest.raises(tandem.Unavailable):
                await client.generate("hi", timeout=30)
    else:
        with tandem.Client(samplers[0], samplers=samplers, retry=policy) as client, pytest.raises(tandem.Unavailable):
            client.generate("hi", timeout=30)
    assert [(attempt, code) for attempt, code, _ in retries.calls] == [(1, "UNAVAILABLE"), (2, "UNAVAILABLE"), (3, "UNAVAILABLE"), (4, "UNAVAILABLE")]
    delays = [delay for _, _, delay in retries.calls]
    assert delays[0] == delays[2] == 0.0, "the second replica is tried at once"
    assert 0.05 <= delays[1] <= 0.1 and 0.1 <= delays[3] <= 0.2, f"then the backoff grows: {delays}"


def test_a_list_spreads_calls_and_a_generate_killed_mid_stream_finishes_on_the_other(replicas: list[ServerProcess]) -> None:
    retries = RetryLog()
    addresses = [server.address for server in replicas]
    with tandem.Client(addresses[0], samplers=addresses, retry=tandem.RetryPolicy(on_retry=retries)) as client:
        before = [generate_calls(server) for server in replicas]
        for _ in range(4):
            assert client.generate("The people", sampling=SHORT)[0].completion_tokens == 4
        assert [generate_calls(server) - calls for server, calls in zip(replicas, before)] == [2, 2], "each call starts on the next replica"
        assert retries.calls == []

        results: list[list[tandem.Completion]] = []
        call = threading.Thread(target=lambda: results.append(client.generate(["The people", "A cat"], sampling=LONG)))
        call.start()
        killed = kill_while_sampling(replicas)
        call.join(timeout=300)
        (survivor,) = [server for server in replicas if server is not killed]
        assert results, "generate() returned"
        (completions,) = results
        assert [(c.prompt_index, c.completion_tokens, c.finish_reason) for c in completions] == [(0, 300, "length"), (1, 300, "length")]
        assert all(len(c.token_ids) == 300 for c in completions), "whole samples from the survivor, nothing of the broken stream mixed in"
        assert [code for _, code, _ in retries.calls] == ["UNAVAILABLE"]
        served = generate_calls(survivor)
        for _ in range(3):  # the dead replica's turns go to the survivor
            client.generate("The people", sampling=SHORT)
        assert generate_calls(survivor) == served + 3


async def test_a_stream_that_delivered_events_raises_instead_of_starting_again(replicas: list[ServerProcess]) -> None:
    retries = RetryLog()
    addresses = [server.address for server in replicas]
    async with tandem.AsyncClient(addresses[0], samplers=addresses, retry=tandem.RetryPolicy(on_retry=retries)) as client:
        stream = client.generate_stream("The people", sampling=LONG)
        received = [await anext(stream)]
        killed = kill_while_sampling(replicas)
        with pytest.raises(tandem.Unavailable):
            async for chunk in stream:
                received.append(chunk)
        assert 0 < sum(len(chunk.token_ids) for chunk in received) < 300
        assert retries.calls == [], "events reached the caller: starting again would repeat them"
        (survivor,) = [server for server in replicas if server is not killed]
        served = generate_calls(survivor)
        assert (await client.generate("The people", sampling=SHORT))[0].completion_tokens == 4
        assert generate_calls(survivor) == served + 1


def test_round_robin_over_one_target_spreads_calls_and_retries_past_a_dead_replica(replicas: list[ServerProcess]) -> None:
    retries = RetryLog()
    target = "ipv4:///" + ",".join(server.address for server in replicas)
    with tandem.Client(replicas[0].address, samplers=target, retry=tandem.RetryPolicy(max_backoff=0.5, on_retry=retries)) as client:
        before = [generate_calls(server) for server in replicas]
        for _ in range(8):
            client.generate("The people", sampling=SHORT)
        assert all(generate_calls(server) - calls >= 2 for server, calls in zip(replicas, before)), "round_robin used both subchannels"

        results: list[list[tandem.Completion]] = []
        call = threading.Thread(target=lambda: results.append(client.generate("The people", sampling=LONG)))
        call.start()
        killed = kill_while_sampling(replicas)
        call.join(timeout=300)
        assert results and results[0][0].completion_tokens == 300
        assert {code for _, code, _ in retries.calls} == {"UNAVAILABLE"}
        (survivor,) = [server for server in replicas if server is not killed]
        served = generate_calls(survivor)
        for _ in range(4):
            client.generate("The people", sampling=SHORT)
        assert generate_calls(survivor) == served + 4


def test_a_dns_target_resolving_to_one_server_works(server: ServerProcess) -> None:
    port = server.address.rsplit(":", 1)[1]
    with tandem.Client(server.address, samplers=f"dns:///localhost:{port}") as client:
        assert client.generate("The people", sampling=SHORT)[0].completion_tokens == 4
        assert client.compute_logprobs([[5, 6, 7]]).sequences[0].logprobs
