"""The clients and CLI over mutual TLS with a bearer token, against a server that demands both."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import tandem
from tests.support.certs import CertificateAuthority, Pem, start_mutual_tls_server
from tests.support.server import ServerProcess

TOKEN = "client-test-token"
NO_RETRY = tandem.RetryPolicy(max_attempts=1)


@dataclass
class SecureServer:
    """A server that wants TLS, a client certificate signed by ``authority`` and ``TOKEN``."""

    process: ServerProcess
    authority: CertificateAuthority
    client_pem: Pem

    def tls(self, client_pem: Pem | None = None) -> tandem.TlsOptions:
        pem = client_pem or self.client_pem
        return tandem.TlsOptions.from_files(self.authority.pem.cert, pem.cert, pem.key)


@pytest.fixture(scope="module")
def secure(tiny_cache: Path, server_logs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureServer]:
    process, authority = start_mutual_tls_server(tiny_cache, server_logs, tmp_path_factory.mktemp("client-pki"), TOKEN)
    yield SecureServer(process, authority, authority.issue("trainer", server=False))
    process.stop()


def test_mutual_tls_and_token_are_served(secure: SecureServer) -> None:
    retry = tandem.RetryPolicy(max_attempts=50, max_backoff=0.5)  # the port is bound; the server may still be starting
    with tandem.Client(secure.process.address, token=TOKEN, tls=secure.tls(), retry=retry) as client:
        assert client.get_model(timeout=60) is None


@pytest.mark.parametrize("token", [None, TOKEN + "x"], ids=["missing", "wrong"])
def test_missing_or_wrong_token_is_unauthenticated(secure: SecureServer, token: str | None) -> None:
    with tandem.Client(secure.process.address, token=token, tls=secure.tls(), retry=NO_RETRY) as client:
        with pytest.raises(tandem.Unauthenticated) as caught:
            client.get_model()
    assert caught.value.code.name == "UNAUTHENTICATED"


def test_client_certificate_of_another_ca_is_refused(secure: SecureServer, tmp_path: Path) -> None:
    impostor = CertificateAuthority(tmp_path, "impostor-ca").issue("impostor", server=False)
    with tandem.Client(secure.process.address, token=TOKEN, tls=secure.tls(impostor), retry=NO_RETRY) as client:
        with pytest.raises(tandem.Unavailable):
            client.get_model(timeout=10)


def test_plaintext_client_is_refused(secure: SecureServer) -> None:
    with tandem.Client(secure.process.address, token=TOKEN, retry=NO_RETRY) as client, pytest.raises(tandem.Unavailable):
        client.get_model(timeout=10)


async def test_async_client_over_mutual_tls(secure: SecureServer) -> None:
    async with tandem.AsyncClient(secure.process.address, token=TOKEN, tls=secure.tls()) as client:
        assert await client.get_model() is None
        with pytest.raises(tandem.FailedPrecondition):
            await client.generate("hi")


def test_tls_options_need_certificate_and_key_together(secure: SecureServer) -> None:
    with pytest.raises(ValueError, match="both"):
        tandem.TlsOptions(root_certificates=secure.authority.pem.cert.read_bytes(), client_certificate=b"pem")


def run_cli(secure: SecureServer, *args: str, token: str | None) -> subprocess.CompletedProcess[str]:
    pki = ["--ca-cert", str(secure.authority.pem.cert), "--client-cert", str(secure.client_pem.cert), "--client-key", str(secure.client_pem.key)]
    env = {key: value for key, value in os.environ.items() if key != "TANDEM_TOKEN"}
    if token is not None:
        env["TANDEM_TOKEN"] = token
    command = [sys.executable, "-m", "tandem.cli", "--target", secure.process.address, *pki, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)


def test_cli_token_from_environment_and_tls_flags(secure: SecureServer) -> None:
    result = run_cli(secure, "status", "--json", token=TOKEN)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"loaded": False, "model": None}


def test_cli_without_token_exits_1_with_the_code(secure: SecureServer) -> None:
    result = run_cli(secure, "status", token=None)
    assert result.returncode == 1
    assert result.stderr.startswith("tandem: UNAUTHENTICATED:")
