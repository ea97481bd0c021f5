"""A throw-away certificate authority for TLS tests (the ``cryptography`` package, no openssl CLI)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.server import ServerProcess, start_server


@dataclass(frozen=True)
class Pem:
    """A certificate and its key, as PEM files."""

    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes]:
        """(certificate chain, private key) bytes, as grpc's credentials want them."""
        return self.cert.read_bytes(), self.key.read_bytes()


class CertificateAuthority:
    """A self-signed CA that issues server and client certificates valid for one day."""

    def __init__(self, directory: Path, name: str) -> None:
        self._directory = directory
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = self._builder(self._name, self._key.public_key()).add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        self._cert = builder.sign(self._key, hashes.SHA256())
        self.pem = self._write(name, self._cert, self._key)

    def _builder(self, subject: x509.Name, public_key) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.timezone.utc)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    def _write(self, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pem:
        pem = Pem(self._directory / f"{name}.crt", self._directory / f"{name}.key")
        pem.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pem.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return pem

    def issue(self, name: str, *, server: bool) -> Pem:
        """A leaf certificate for ``localhost`` / 127.0.0.1 (server) or a client identity named ``name``."""
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = self._builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), key.public_key()).add_extension(
            x509.ExtendedKeyUsage([usage]), critical=False
        )
        if server:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return self._write(name, builder.sign(self._key, hashes.SHA256()), key)

    def server_flags(self, name: str = "server", *, mutual: bool = True) -> list[str]:
        """``python -m service`` flags serving TLS with a new certificate; with ``mutual``, clients need one from this CA."""
        pem = self.issue(name, server=True)
        flags = ["--tls-cert", str(pem.cert), "--tls-key", str(pem.key)]
        return flags + ["--tls-client-ca", str(self.pem.cert)] if mutual else flags


def start_mutual_tls_server(cache: Path, logs: Path, directory: Path, token: str) -> tuple[ServerProcess, CertificateAuthority]:
    """A server with no model that wants a client certificate from a new CA (made in ``directory``) and ``token``."""
    authority = CertificateAuthority(directory, f"{directory.name}-ca")
    token_file = directory / "token"
    token_file.write_text(token)
    flags = ["--model", "none", *authority.server_flags(), "--auth-token-file", str(token_file)]
    return start_server(cache, logs, *flags, wait_ready=False), authority
