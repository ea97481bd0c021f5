"""The SFT example trains on the committed sample file, lowers the loss and saves a checkpoint."""

from __future__ import annotations

import json

import grpc
import pytest
from tandem.v1 import tandem_pb2 as pb
from tandem.v1 import tandem_pb2_grpc

from tests.examples.runner import EXAMPLES, run_example

pytestmark = pytest.mark.timeout(300)


def test_sft_on_the_sample_file_learns_and_saves(example_server, tmp_path):
    record = tmp_path / "sft.json"
    run_example(
        "sft.py", str(EXAMPLES / "data" / "sft_sample.jsonl"),
        "--address", example_server.address, "--epochs", "6", "--save", "sft-test", "--json", str(record),
        timeout=280,
    )
    result = json.loads(record.read_text())
    assert result["steps"] == 18
    assert result["epoch_losses"][-1] < result["epoch_losses"][0] / 3
    with grpc.insecure_channel(example_server.address) as channel:
        saved = tandem_pb2_grpc.TandemServiceStub(channel).ListAdapters(pb.ListAdaptersRequest(), timeout=10).checkpoints
    assert [(c.name, c.step) for c in saved] == [("sft-test", 18)]
