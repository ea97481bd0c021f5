"""Start-up, readiness, metrics: the server as an operator sees it."""

from __future__ import annotations

import urllib.request

import grpc
from grpc_health.v1 import health_pb2
from prometheus_client.parser import text_string_to_metric_families
from tandem.v1 import tandem_pb2 as pb
from tandem.v1 import tandem_pb2_grpc

from tests.support.server import start_server


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of the exposition, keyed by (name, sorted labels)."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_an_empty_server_is_live_but_not_ready_until_a_model_loads(tiny_cache, server_logs):
    server = start_server(tiny_cache, server_logs, "--model", "none", wait_ready=False)
    try:
        assert server.health("") == health_pb2.HealthCheckResponse.SERVING
        assert server.health() == health_pb2.HealthCheckResponse.NOT_SERVING
        with grpc.insecure_channel(server.address) as channel:
            stub = tandem_pb2_grpc.TandemServiceStub(channel)
            assert not stub.GetModel(pb.GetModelRequest(), timeout=10).loaded
            list(stub.LoadModel(pb.LoadModelRequest(), timeout=120))
            assert server.health() == health_pb2.HealthCheckResponse.SERVING
            stub.UnloadModel(pb.UnloadModelRequest(), timeout=30)
            assert server.health() == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        assert server.stop() == 0


def test_metrics_move_after_traffic(server, stub):
    before = scrape(server.metrics_url)
    request = pb.GenerateRequest(prompts=[pb.Prompt(text="Water")], sampling=pb.SamplingParams(max_tokens=5, ignore_eos=True))
    assert sum(len(c.token_ids) for c in stub.Generate(request, timeout=60)) == 5
    reply = stub.TrainStep(pb.TrainStepRequest(sequences=[pb.TrainSequence(prompt="Water", completion=" is good")]), timeout=60)
    try:
        stub.Generate(pb.GenerateRequest(), timeout=10).next()
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = scrape(server.metrics_url)

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved("tandem_generated_tokens_total") == 5
    assert moved("tandem_trained_tokens_total") == reply.tokens
    assert moved("tandem_requests_total", rpc="Generate", code="OK") == 1
    assert moved("tandem_requests_total", rpc="TrainStep", code="OK") == 1
    assert moved("tandem_requests_total", rpc="Generate", code="INVALID_ARGUMENT") == 1
    assert moved("tandem_request_duration_seconds_count", rpc="TrainStep") == 1
    assert moved("tandem_time_to_first_token_seconds_count") == 1
    assert after[("tandem_adapter_version", ())] == reply.adapter_version
    assert after[("tandem_model_loaded", ())] == 1
    assert after[("tandem_process_resident_memory_bytes", ())] > 100e6
