"""The Grafana dashboard covers each area and queries only what the service exports, in valid PromQL."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.deploy.prometheus import PrometheusProcess, PromQLError, fetch_exposition
from tests.deploy.promql import exported_series_names, metric_names
from tests.support.server import REPO, ServerProcess

DASHBOARD = REPO / "deploy" / "grafana" / "tandem-dashboard.json"
AREAS = ("Throughput", "Latency", "Memory", "Training", "Scale-out", "Errors")
PROMETHEUS_SERIES = {"up"}  # written by Prometheus itself for every target
# Grafana variables, as Grafana substitutes them before sending a query.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$instance": ".*"}
LABEL_VALUES = re.compile(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    """deploy/grafana's dashboard."""
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of every panel target."""
    return [target["expr"] for panel in panels(dashboard) for target in panel.get("targets", [])]


def as_sent_by_grafana(expression: str) -> str:
    """The expression with Grafana's variables filled in."""
    for variable, value in GRAFANA_VARIABLES.items():
        expression = expression.replace(variable, value)
    return expression


def test_dashboard_has_a_section_for_each_area(dashboard: dict[str, Any]) -> None:
    rows = [panel["title"] for panel in panels(dashboard) if panel["type"] == "row"]
    assert set(AREAS) <= set(rows)
    for panel in panels(dashboard):
        if panel["type"] != "row":
            assert panel.get("targets"), f"panel {panel['title']!r} queries nothing"


def row(dashboard: dict[str, Any], title: str) -> list[dict[str, Any]]:
    """The panels of row ``title``: those after it, up to the next row."""
    flat = list(panels(dashboard))
    start = next(index for index, panel in enumerate(flat) if panel["type"] == "row" and panel["title"] == title) + 1
    end = next((index for index in range(start, len(flat)) if flat[index]["type"] == "row"), len(flat))
    return flat[start:end]


def test_scale_out_row_shows_each_replicas_version_and_the_publish_lag(dashboard: dict[str, Any]) -> None:
    """Per pod (the label Prometheus gives each scraped replica) the version it serves; the publish -> serve lag."""
    exprs = [target["expr"] for panel in row(dashboard, "Scale-out") for target in panel["targets"]]
    assert any(re.search(r"by \(pod\) \(tandem_adapter_version\{", expr) for expr in exprs)
    lag = [expr for expr in exprs if "tandem_adapter_publish_lag_seconds_bucket" in expr]
    assert lag and all(expr.startswith("histogram_quantile(") for expr in lag)


def test_expressions_use_only_exported_metric_names(dashboard: dict[str, Any], server: ServerProcess) -> None:
    exported = exported_series_names(fetch_exposition(server.metrics_url)) | PROMETHEUS_SERIES
    variable_queries = [variable["definition"] for variable in dashboard["templating"]["list"] if variable["type"] == "query"]
    used = {name for expression in expressions(dashboard) for name in metric_names(expression)}
    used |= {match for query in variable_queries for match in LABEL_VALUES.findall(query)}
    assert used, "the dashboard queries metrics"
    assert used - exported == set()


def test_expressions_are_valid_promql(dashboard: dict[str, Any], prometheus: PrometheusProcess) -> None:
    with pytest.raises(PromQLError, match="range vector"):
        prometheus.query("rate(tandem_generated_tokens_total)")
    for expression in expressions(dashboard):
        prometheus.query(as_sent_by_grafana(expression))  # raises PromQLError when Prometheus rejects it


def test_promql_names_would_catch_a_misspelled_metric(server: ServerProcess) -> None:
    """The check above could fail: a name the service does not export is reported."""
    exported = exported_series_names(fetch_exposition(server.metrics_url))
    assert metric_names("sum by (rpc) (rate(tandem_request_total[5m]))") - exported == {"tandem_request_total"}
