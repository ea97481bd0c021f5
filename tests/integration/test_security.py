"""Bearer-token auth, TLS and mutual TLS, the plaintext health port, and turning reflection off.

The tests make their own certificate authority; servers start with ``--model none``
because nothing here needs a model (GetModel answers ``loaded: false``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tandem.v1 import tandem_pb2 as pb
from tandem.v1 import tandem_pb2_grpc

from tests.support.certs import CertificateAuthority, Pem
from tests.support.server import ServerProcess, start_server

TOKEN = "s3cret-token-for-tests"
HEALTH_LINE = re.compile(r"tandem: health alone on [\d.]+:(\d+)")


def _health_port(server: ServerProcess) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if match := HEALTH_LINE.search(server.log()):
            return int(match[1])
        time.sleep(0.05)
    raise AssertionError(f"no health port line in the log:\n{server.log()}")


def _check(channel: grpc.Channel, service: str = "") -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def _tls_channel(server: ServerProcess, ca: Pem, client: Pem | None = None) -> grpc.Channel:
    chain, key = client.read() if client else (None, None)
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.cert.read_bytes(), private_key=key, certificate_chain=chain)
    return grpc.secure_channel(server.address, credentials)


def _wait_serving(server: ServerProcess) -> None:
    """Liveness through the plaintext health port (the main port needs TLS)."""
    with grpc.insecure_channel(f"127.0.0.1:{_health_port(server)}") as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        assert _check(channel) == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority(tmp_path_factory.mktemp("pki"), "tandem-test-ca")


@pytest.fixture(scope="module")
def tls_token_server(tiny_cache: Path, server_logs: Path, authority: CertificateAuthority, tmp_path_factory) -> Iterator[ServerProcess]:
    """TLS (no client certificates), a bearer token from a file, reflection off, health on its own port."""
    token_file = tmp_path_factory.mktemp("secret") / "token"
    token_file.write_text(TOKEN + "\n")
    process = start_server(
        tiny_cache,
        server_logs,
        "--model", "none",
        *authority.server_flags(mutual=False),
        "--auth-token-file", str(token_file),
        "--no-reflection",
        "--health-port", "0",
        wait_ready=False,
    )  # fmt: skip
    _wait_serving(process)
    yield process
    assert process.stop() == 0


@pytest.fixture(scope="module")
def mtls_server(tiny_cache: Path, server_logs: Path, authority: CertificateAuthority) -> Iterator[ServerProcess]:
    """Mutual TLS: clients must present a certificate signed by the test CA."""
    process = start_server(
        tiny_cache,
        server_logs,
        "--model", "none",
        *authority.server_flags("mtls-server"),
        "--health-port", "0",
        wait_ready=False,
    )  # fmt: skip
    _wait_serving(process)
    yield process
    assert process.stop() == 0


def test_call_without_token_is_unauthenticated(tls_token_server: ServerProcess, authority: CertificateAuthority) -> None:
    with _tls_channel(tls_token_server, authority.pem) as channel:
        with pytest.raises(grpc.RpcError) as error:
            tandem_pb2_grpc.TandemServiceStub(channel).GetModel(pb.GetModelRequest(), timeout=10)
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer" in error.value.details()


@pytest.mark.parametrize(
    "header",
    [f"Bearer {TOKEN}x", "Bearer ", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN[:-1]}"],
    ids=["longer", "empty", "other-scheme", "no-scheme", "prefix"],
)
def test_wrong_token_is_unauthenticated(tls_token_server: ServerProcess, authority: CertificateAuthority, header: str) -> None:
    with _tls_channel(tls_token_server, authority.pem) as channel:
        stub = tandem_pb2_grpc.TandemServiceStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            stub.GetModel(pb.GetModelRequest(), metadata=[("authorization", header)], timeout=10)
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as stream_error:  # streaming RPCs are refused the same way
            list(stub.Generate(pb.GenerateRequest(prompts=[pb.Prompt(text="hi")]), metadata=[("authorization", header)], timeout=10))
        assert stream_error.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_right_token_over_tls_is_served(tls_token_server: ServerProcess, authority: CertificateAuthority) -> None:
    with _tls_channel(tls_token_server, authority.pem) as channel:
        stub = tandem_pb2_grpc.TandemServiceStub(channel)
        for scheme in ("Bearer", "bearer"):
            reply = stub.GetModel(pb.GetModelRequest(), metadata=[("authorization", f"{scheme} {TOKEN}")], timeout=10)
            assert reply.loaded is False


def test_health_needs_no_token(tls_token_server: ServerProcess, authority: CertificateAuthority) -> None:
    with _tls_channel(tls_token_server, authority.pem) as channel:
        assert _check(channel) == health_pb2.HealthCheckResponse.SERVING
        # readiness is NOT_SERVING: the server was started without a model
        assert _check(channel, "tandem.v1.TandemService") == health_pb2.HealthCheckResponse.NOT_SERVING


def test_health_port_serves_health_only(tls_token_server: ServerProcess) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{_health_port(tls_token_server)}") as channel:
        assert _check(channel) == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as error:
            tandem_pb2_grpc.TandemServiceStub(channel).GetModel(pb.GetModelRequest(), metadata=[("authorization", f"Bearer {TOKEN}")], timeout=10)
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_plaintext_client_cannot_talk_to_tls_port(tls_token_server: ServerProcess) -> None:
    with grpc.insecure_channel(tls_token_server.address) as channel:
        with pytest.raises(grpc.RpcError) as error:
            tandem_pb2_grpc.TandemServiceStub(channel).GetModel(pb.GetModelRequest(), metadata=[("authorization", f"Bearer {TOKEN}")], timeout=5)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_rejects_server_signed_by_another_ca(tls_token_server: ServerProcess, tmp_path: Path) -> None:
    stranger = CertificateAuthority(tmp_path, "stranger-ca")
    with _tls_channel(tls_token_server, stranger.pem) as channel:
        with pytest.raises(grpc.RpcError) as error:
            _check(channel)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_reflection_can_be_turned_off(tls_token_server: ServerProcess, authority: CertificateAuthority) -> None:
    with _tls_channel(tls_token_server, authority.pem) as channel:
        responses = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=[("authorization", f"Bearer {TOKEN}")], timeout=10
        )
        with pytest.raises(grpc.RpcError) as error:
            list(responses)
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_reflection_is_on_by_default(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.address) as channel:
        responses = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        services = {s.name for r in responses for s in r.list_services_response.service}
    assert "tandem.v1.TandemService" in services


def test_mutual_tls_accepts_a_client_certificate_of_the_ca(mtls_server: ServerProcess, authority: CertificateAuthority) -> None:
    with _tls_channel(mtls_server, authority.pem, authority.issue("trainer", server=False)) as channel:
        assert tandem_pb2_grpc.TandemServiceStub(channel).GetModel(pb.GetModelRequest(), timeout=10).loaded is False


def test_mutual_tls_refuses_a_client_without_certificate(mtls_server: ServerProcess, authority: CertificateAuthority) -> None:
    with _tls_channel(mtls_server, authority.pem) as channel:
        with pytest.raises(grpc.RpcError) as error:
            tandem_pb2_grpc.TandemServiceStub(channel).GetModel(pb.GetModelRequest(), timeout=10)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_refuses_a_client_certificate_of_another_ca(mtls_server: ServerProcess, authority: CertificateAuthority, tmp_path: Path) -> None:
    impostor = CertificateAuthority(tmp_path, "impostor-ca").issue("impostor", server=False)
    with _tls_channel(mtls_server, authority.pem, impostor) as channel:
        with pytest.raises(grpc.RpcError) as error:
            tandem_pb2_grpc.TandemServiceStub(channel).GetModel(pb.GetModelRequest(), timeout=10)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
