"""Server flags: every limit is a flag, and the security flags build the config they say."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from service.__main__ import AUTH_TOKEN_ENV, ENGINE_COMPILE_ENV, MODEL_ENV, TRAIN_COMPILE_ENV, parse_config
from service.config import Limits, TlsConfig


def test_every_limit_is_a_flag_with_its_default() -> None:
    assert parse_config([]).limits == Limits()
    for number, limit in enumerate(fields(Limits), start=2):
        flag = "--" + limit.name.replace("_", "-")
        assert getattr(parse_config([flag, str(number)]).limits, limit.name) == number


@pytest.mark.parametrize("value", ["0", "-5"])
def test_a_limit_below_one_is_refused(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_config(["--max-new-tokens", value])
    assert "--max-new-tokens must be at least 1" in capsys.readouterr().err


def test_no_token_no_tls_by_default_and_reflection_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(AUTH_TOKEN_ENV, raising=False)
    config = parse_config([])
    assert (config.auth_token, config.tls, config.reflection, config.health_port) == (None, None, True, None)


def test_token_from_file_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(AUTH_TOKEN_ENV, "from-env")
    assert parse_config([]).auth_token == "from-env"
    token = tmp_path / "token"
    token.write_text("from-file\n")
    config = parse_config(["--auth-token-file", str(token)])
    assert config.auth_token == "from-file"
    assert "from-file" not in repr(config)  # the secret never reaches a log line through the config


def test_an_empty_token_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("\n")
    with pytest.raises(SystemExit):
        parse_config(["--auth-token-file", str(tmp_path / "token")])


def test_tls_flags(tmp_path: Path) -> None:
    cert, key, ca = tmp_path / "c", tmp_path / "k", tmp_path / "ca"
    assert parse_config(["--tls-cert", str(cert), "--tls-key", str(key)]).tls == TlsConfig(cert, key)
    assert parse_config(["--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(ca)]).tls == TlsConfig(cert, key, ca)
    for incomplete in (["--tls-cert", str(cert)], ["--tls-key", str(key)], ["--tls-client-ca", str(ca)]):
        with pytest.raises(SystemExit):
            parse_config(incomplete)


def test_reflection_off_and_health_port() -> None:
    config = parse_config(["--no-reflection", "--health-port", "0"])
    assert (config.reflection, config.health_port) == (False, 0)


def test_torch_threads() -> None:
    assert parse_config([]).torch_threads is None
    assert parse_config(["--torch-threads", "1"]).torch_threads == 1
    with pytest.raises(SystemExit):
        parse_config(["--torch-threads", "0"])


def test_startup_model_from_flag_environment_or_built_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MODEL_ENV, raising=False)
    assert parse_config([]).startup_model == "tandem/tiny"
    assert parse_config(["--model", "none"]).startup_model is None
    monkeypatch.setenv(MODEL_ENV, "none")
    assert parse_config([]).startup_model is None
    monkeypatch.setenv(MODEL_ENV, "my-model")
    assert parse_config([]).startup_model == "my-model"
    assert parse_config(["--model", "tandem/tiny"]).startup_model == "tandem/tiny", "the flag wins over the environment"


@pytest.mark.parametrize(("flag", "env", "field"), [("--engine-compile", ENGINE_COMPILE_ENV, "engine_compile"), ("--train-compile", TRAIN_COMPILE_ENV, "train_compile")])
def test_a_compile_switch_is_on_unless_the_flag_or_environment_turns_it_off(monkeypatch: pytest.MonkeyPatch, flag: str, env: str, field: str) -> None:
    monkeypatch.delenv(env, raising=False)
    assert getattr(parse_config([]), field) is True
    assert getattr(parse_config([flag, "off"]), field) is False
    monkeypatch.setenv(env, "off")
    assert getattr(parse_config([]), field) is False
    assert getattr(parse_config([flag, "on"]), field) is True
