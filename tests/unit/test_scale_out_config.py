"""Scale-out settings: the role flags build the config they say, LoadModel carries publish_every_steps, GetModel reports the role."""

from __future__ import annotations

from pathlib import Path

import pytest
from tandem.v1 import tandem_pb2 as pb

from service import convert
from service.__main__ import ADAPTER_STORE_ENV, ROLE_ENV, TRAINER_ADDRESS_ENV, parse_config
from service.config import Role
from service.runtime.specs import RoleDescription


def test_the_default_role_is_both_without_a_store() -> None:
    config = parse_config([])
    assert (config.role, config.adapter_store, config.trainer_address, config.max_adapter_wait_seconds) == (Role.BOTH, None, None, 30.0)


def test_role_flags(tmp_path: Path) -> None:
    trainer = parse_config(["--role", "trainer", "--adapter-store", str(tmp_path)])
    assert (trainer.role, trainer.adapter_store) == (Role.TRAINER, tmp_path)
    sampler = parse_config(
        ["--role", "sampler", "--adapter-store", str(tmp_path), "--trainer-address", "trainer-0.tandem:50051", "--max-adapter-wait-seconds", "2.5"]
    )
    assert (sampler.role, sampler.trainer_address, sampler.max_adapter_wait_seconds) == (Role.SAMPLER, "trainer-0.tandem:50051", 2.5)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--role", "sampler"], "--role sampler needs --adapter-store"),
        (["--role", "trainer"], "--role trainer needs --adapter-store"),
        (["--adapter-store", "store"], "--adapter-store needs --role trainer or --role sampler"),
        (["--role", "trainer", "--adapter-store", "store", "--trainer-address", "t:1"], "--trainer-address is for --role sampler"),
        (["--max-adapter-wait-seconds", "-1"], "--max-adapter-wait-seconds must be at least 0"),
        (["--role", "leader"], "invalid choice: 'leader'"),
    ],
)
def test_inconsistent_role_flags_are_refused(flags: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_config(flags)
    assert message in capsys.readouterr().err


def test_the_environment_sets_the_role_store_and_trainer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(ROLE_ENV, "sampler")
    monkeypatch.setenv(ADAPTER_STORE_ENV, str(tmp_path))
    monkeypatch.setenv(TRAINER_ADDRESS_ENV, "trainer:50051")
    config = parse_config([])
    assert (config.role, config.adapter_store, config.trainer_address) == (Role.SAMPLER, tmp_path, "trainer:50051")
    monkeypatch.setenv(ROLE_ENV, "leader")
    with pytest.raises(SystemExit):
        parse_config([])
    assert "$TANDEM_ROLE='leader' is not a role" in capsys.readouterr().err


def test_publish_every_steps_defaults_to_every_step() -> None:
    assert convert.load_spec(pb.LoadModelRequest()).publish_every_steps == 1
    assert convert.load_spec(pb.LoadModelRequest(publish_every_steps=0)).publish_every_steps == 0
    assert convert.load_spec(pb.LoadModelRequest(publish_every_steps=5)).publish_every_steps == 5


def test_get_model_reports_the_role_without_a_model() -> None:
    reply = convert.get_model_response(None, RoleDescription(Role.SAMPLER, "trainer:50051", 7))
    assert (reply.loaded, reply.role, reply.trainer_address) == (False, pb.SERVER_ROLE_SAMPLER, "trainer:50051")
    assert not reply.HasField("model")
