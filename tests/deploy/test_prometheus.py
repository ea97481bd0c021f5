"""A real Prometheus, configured from deploy/prometheus, scrapes a real server while it samples and trains."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tandem.v1 import tandem_pb2, tandem_pb2_grpc

from tests.deploy.prometheus import DEPLOY_PROMETHEUS, SCRAPE_CONFIG, PrometheusProcess, fetch_exposition
from tests.support.server import ServerProcess, require_tool

# Series that must move when one Generate and one applied TrainStep run.
MOVED_BY_TRAFFIC = (
    "tandem_generated_tokens_total",
    "tandem_trained_tokens_total",
    "tandem_time_to_first_token_seconds_count",
    "tandem_lora_sync_seconds_count",
    "tandem_adapter_version",
    'tandem_train_steps_total{outcome="applied"}',
    'tandem_train_step_phase_seconds_count{phase="forward_backward"}',
)
COUNTED_BY_TRAFFIC = (
    'tandem_requests_total{rpc="Generate", code="OK"}',
    'tandem_requests_total{rpc="TrainStep", code="OK"}',
    'tandem_request_duration_seconds_count{rpc="TrainStep"}',
)


@pytest.fixture(scope="session")
def promtool() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Runs promtool; a test that asks for it skips where promtool is missing (fails under CI=true) before a
    server starts for it. Results keep their output for assertion messages."""
    binary = require_tool("promtool")

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([binary, *args], input=stdin, capture_output=True, text=True, timeout=120)

    return run


def generate_and_train(address: str) -> None:
    """One Generate (streamed to the end) and one applied TrainStep through the generated stubs."""
    with grpc.insecure_channel(address) as channel:
        stub = tandem_pb2_grpc.TandemServiceStub(channel)
        request = tandem_pb2.GenerateRequest(prompts=[tandem_pb2.Prompt(text="The people")], sampling=tandem_pb2.SamplingParams(max_tokens=8, temperature=0))
        assert list(stub.Generate(request, timeout=60))
        reply = stub.TrainStep(
            tandem_pb2.TrainStepRequest(
                sequences=[tandem_pb2.TrainSequence(prompt="The people", completion=" say hello")],
                optimizer=tandem_pb2.OptimizerConfig(learning_rate=1e-2),
            ),
            timeout=60,
        )
        assert reply.adapter_version >= 1


def value(prometheus: PrometheusProcess, selector: str) -> float:
    """The one sample of ``selector`` Prometheus holds now (waiting for its first scrape)."""
    (sample,) = prometheus.wait_for(selector)
    return float(sample["value"][1])


def test_deploy_configuration_and_rules_check(promtool) -> None:
    checked = promtool("check", "config", str(SCRAPE_CONFIG))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(DEPLOY_PROMETHEUS / "tandem-rules.test.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_series_are_scraped_and_move_with_traffic(server: ServerProcess, prometheus: PrometheusProcess) -> None:
    assert value(prometheus, 'up{job="tandem"}') == 1
    before = {selector: value(prometheus, selector) for selector in MOVED_BY_TRAFFIC}

    generate_and_train(server.address)

    for selector in MOVED_BY_TRAFFIC:
        prometheus.wait_for(f"{selector} > {before[selector]}")
    for selector in COUNTED_BY_TRAFFIC:
        assert value(prometheus, selector) >= 1
    assert value(prometheus, "tandem_model_loaded") == 1
    assert value(prometheus, "tandem_process_resident_memory_bytes") > 0


def test_every_exposed_series_reaches_prometheus(server: ServerProcess, prometheus: PrometheusProcess) -> None:
    prometheus.wait_for('tandem_requests_total{rpc="TrainStep"}')
    exposition = fetch_exposition(server.metrics_url)
    exposed = {sample.name for family in text_string_to_metric_families(exposition) for sample in family.samples}
    stored = set(prometheus.api("label/__name__/values", **{"match[]": '{job="tandem"}'}))
    # _created timestamps are not samples in Prometheus's OpenMetrics scrape.
    assert {name for name in exposed if not name.endswith("_created")} <= stored
    assert all(name.startswith("tandem_") for name in exposed)


def test_exposition_passes_promtool_check_metrics(promtool, server: ServerProcess) -> None:
    generate_and_train(server.address)  # so the per-RPC and per-phase series exist, whatever ran before
    exposition = fetch_exposition(server.metrics_url)
    assert "tandem_requests_total{" in exposition
    completed = promtool("check", "metrics", stdin=exposition)
    assert completed.returncode == 0, completed.stdout + completed.stderr


@pytest.mark.parametrize("bad_name", ["tandem_tokens_generated", "tandem_latency_ms"])
def test_promtool_check_metrics_flags_bad_names(promtool, bad_name: str) -> None:
    """The check above could fail: a counter without _total, or a non-base unit, is flagged."""
    exposition = f"# HELP {bad_name} x\n# TYPE {bad_name} counter\n{bad_name} 1\n"
    assert promtool("check", "metrics", stdin=exposition).returncode != 0
