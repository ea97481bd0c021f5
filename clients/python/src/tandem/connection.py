"""Where and how to connect: trainer and sampler targets, bearer token, TLS / mutual TLS, message size."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

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


class ChannelKind(NamedTuple):
    """How to open a channel: grpc's blocking functions or grpc.aio's."""

    insecure: Callable[..., Any]
    secure: Callable[..., Any]


BLOCKING = ChannelKind(grpc.insecure_channel, grpc.secure_channel)
ASYNCIO = ChannelKind(grpc.aio.insecure_channel, grpc.aio.secure_channel)


@dataclass(frozen=True)
class ConnectionSettings:
    """Everything a client needs to reach the server; shared by the sync and asyncio clients."""

    target: str = DEFAULT_TARGET
    """host:port of the server; with ``samplers``, of the trainer."""
    samplers: str | tuple[str, ...] | None = None
    """Where sampling calls go: None, to ``target``; a gRPC target (``dns:///name:port``) balanced
    with ``round_robin``; or host:port addresses, tried in turn (see :mod:`tandem.routing`)."""
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

    def open_channel(self, target: str, kind: ChannelKind, service_config: str | None = None) -> Any:
        """A channel of ``kind`` to ``target``, with these credentials and options (and ``service_config``, JSON)."""
        options = self.channel_options()
        if service_config is not None:
            options.append(("grpc.service_config", service_config))
        if self.tls is None:
            return kind.insecure(target, options=options)
        return kind.secure(target, self.tls.credentials(), options=options)
