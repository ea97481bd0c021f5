"""Where and how to connect: target, bearer token, TLS / mutual TLS, message size."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import grpc

from tandem.retry import Deadlines, RetryPolicy

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class TlsOptions:
    """TLS for the channel; with a client certificate and key, mutual TLS.

    ``root_certificates`` is the PEM of the CA that signed the server's
    certificate (None: the system's roots). ``server_name`` overrides the name
    checked against the server certificate (when the target is an IP address
    the certificate does not list, for example).
    """

    root_certificates: bytes | None = None
    client_certificate: bytes | None = None
    client_key: bytes | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.client_certificate is None) != (self.client_key is None):
            raise ValueError("mutual TLS needs both a client certificate and its key")

    @classmethod
    def from_files(
        cls,
        root_certificates: str | Path | None = None,
        client_certificate: str | Path | None = None,
        client_key: str | Path | None = None,
        server_name: str | None = None,
    ) -> TlsOptions:
        """Read the PEM files that are given."""

        def read(path: str | Path | None) -> bytes | None:
            return None if path is None else Path(path).read_bytes()

        return cls(read(root_certificates), read(client_certificate), read(client_key), server_name)

    def credentials(self) -> grpc.ChannelCredentials:
        """gRPC channel credentials for these options."""
        return grpc.ssl_channel_credentials(self.root_certificates, self.client_key, self.client_certificate)


@dataclass(frozen=True)
class ConnectionSettings:
    """Everything a client needs to reach the server; shared by the sync and asyncio clients."""

    target: str = DEFAULT_TARGET
    """host:port of the server."""
    token: str | None = None
    """Bearer token, sent as ``authorization: Bearer <token>`` on every call."""
    tls: TlsOptions | None = None
    """None: plaintext."""
    deadlines: Deadlines = field(default_factory=Deadlines)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata sent with every call."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def channel_options(self) -> list[tuple[str, object]]:
        """Channel arguments: message size limits and the TLS name override."""
        options: list[tuple[str, object]] = [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
        ]
        if self.tls is not None and self.tls.server_name:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        return options

    def channel(self) -> grpc.Channel:
        """A synchronous channel."""
        if self.tls is None:
            return grpc.insecure_channel(self.target, options=self.channel_options())
        return grpc.secure_channel(self.target, self.tls.credentials(), options=self.channel_options())

    def aio_channel(self) -> grpc.aio.Channel:
        """An asyncio channel."""
        if self.tls is None:
            return grpc.aio.insecure_channel(self.target, options=self.channel_options())
        return grpc.aio.secure_channel(self.target, self.tls.credentials(), options=self.channel_options())
