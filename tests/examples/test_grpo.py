"""The GRPO example learns its toy task on the tiny model within a bounded number of steps."""

from __future__ import annotations

import json

import pytest

from tests.examples.runner import run_example

pytestmark = pytest.mark.timeout(300)


def test_grpo_raises_the_mean_reward_clearly(example_server, tmp_path):
    record = tmp_path / "curve.json"
    run_example("grpo.py", "--address", example_server.address, "--steps", "20", "--json", str(record), timeout=280)
    curve = json.loads(record.read_text())
    assert curve["steps"] == 20 and len(curve["rewards"]) == 20
    assert curve["start"] < 0.3  # a random policy hits the 128-token band about 1/8 of the time
    assert curve["end"] > curve["start"] + 0.25
