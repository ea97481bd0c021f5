"""What the sync and asyncio clients share: settings, metadata, deadlines, retry book-keeping."""

from __future__ import annotations

from collections.abc import Callable

from tandem.connection import DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_TARGET, ConnectionSettings, TlsOptions
from tandem.errors import TandemError
from tandem.retry import Attempts, Deadline, Deadlines, RetryPolicy
from tandem.v1 import tandem_pb2 as pb

ProgressCallback = Callable[[pb.LoadProgress], None]
"""Called with each LoadModel progress event."""


class ClientBase:
    """Connection settings and per-call deadlines; subclasses make the calls."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        tls: TlsOptions | None = None,
        deadlines: Deadlines | None = None,
        retry: RetryPolicy | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        """Connect to ``target`` (host:port).

        ``token``: bearer token for every call. ``tls``: TLS or mutual-TLS
        options (None: plaintext). ``deadlines``: default seconds per kind of
        call. ``retry``: how UNAVAILABLE is retried. The channel is opened
        lazily by gRPC; nothing is sent until the first call.
        """
        self.settings = ConnectionSettings(
            target=target,
            token=token,
            tls=tls,
            deadlines=deadlines or Deadlines(),
            retry=retry or RetryPolicy(),
            max_message_bytes=max_message_bytes,
        )
        self._metadata = self.settings.metadata()
        self._connect()

    def _connect(self) -> None:
        """Open the channel and stub (the sync or asyncio kind)."""
        raise NotImplementedError

    @property
    def target(self) -> str:
        """host:port of the server."""
        return self.settings.target

    def _attempts(self, timeout: float | None, default: float) -> Attempts:
        """Retry book-keeping for one call whose deadline is ``timeout`` (or ``default``) seconds from now."""
        return Attempts(self.settings.retry, Deadline(default if timeout is None else timeout))


def loaded_model(event: pb.LoadModelResponse) -> pb.ModelInfo | None:
    """The model of a LoadModel event, or None for a progress event."""
    return event.model if event.WhichOneof("event") == "model" else None


def missing_model_error() -> TandemError:
    """LoadModel's stream ended without the final model event (a server bug)."""
    return TandemError("LoadModel ended without reporting the loaded model")
