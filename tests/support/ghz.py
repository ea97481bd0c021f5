"""Run ghz, the gRPC load tester, against a server with the descriptor set the Python client ships.

ghz reads ``tandem.protoset`` rather than the .proto (its parser predates
proto3 ``optional``) or reflection. Used by the load test and the ghz benchmark.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from importlib import resources

GENERATE = "tandem.v1.TandemService.Generate"
NANOSECONDS = 1e9


@dataclass(frozen=True)
class GhzRun:
    """What one ghz run measured (its JSON report, reduced)."""

    count: int
    """Calls ghz made, whatever their outcome."""
    seconds: float
    calls_per_second: float
    status_codes: dict[str, int]
    errors: dict[str, int]
    latency_seconds: dict[int, float]
    """Percentile (10, 25, 50, 75, 90, 95, 99) -> seconds."""

    @classmethod
    def from_report(cls, report: dict) -> GhzRun:
        """Reduce ghz's ``--format json`` report; its times are nanoseconds."""
        return cls(
            count=report["count"],
            seconds=report["total"] / NANOSECONDS,
            calls_per_second=report["rps"],
            status_codes=report.get("statusCodeDistribution") or {},
            errors=report.get("errorDistribution") or {},
            latency_seconds={d["percentage"]: d["latency"] / NANOSECONDS for d in report.get("latencyDistribution") or []},
        )


def generate_data(max_tokens: int) -> dict:
    """One Generate request of exactly ``max_tokens`` new tokens (EOS ignored), as ghz's JSON call data."""
    return {"prompts": [{"text": "The people"}], "sampling": {"max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}}


def ghz_command(ghz: str, address: str, protoset: str, concurrency: int, total: int, data: dict, call: str = GENERATE) -> list[str]:
    """The ghz command line: plaintext, the shipped protoset, ``total`` calls ``concurrency`` at a time, a JSON report."""
    return [
        ghz,
        "--insecure",
        f"--protoset={protoset}",
        f"--call={call}",
        f"--data={json.dumps(data)}",
        f"--concurrency={concurrency}",
        f"--total={total}",
        "--timeout=120s",
        "--format=json",
        address,
    ]


def run_ghz(ghz: str, address: str, concurrency: int, total: int, data: dict, call: str = GENERATE) -> GhzRun:
    """Run ghz once with the protoset from the installed client package and return what it measured."""
    with resources.as_file(resources.files("tandem.v1") / "tandem.protoset") as protoset:
        command = ghz_command(ghz, address, str(protoset), concurrency, total, data, call)
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"ghz exited with {result.returncode}:\n{result.stderr}")
    return GhzRun.from_report(json.loads(result.stdout))
