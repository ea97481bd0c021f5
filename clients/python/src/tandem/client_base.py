"""What the sync and asyncio clients share: settings, metadata, routes to the servers, the retry loop."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tandem.connection import DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_TARGET, ChannelKind, ConnectionSettings, TlsOptions
from tandem.errors import TandemError
from tandem.retry import Deadline, Deadlines, RetryPolicy, Retrying
from tandem.routing import open_routes
from tandem.v1 import tandem_pb2 as pb

ProgressCallback = Callable[[pb.LoadProgress], None]
"""Called with each LoadModel progress event."""


class ClientBase:
    """Connection settings, routes and per-call retries; subclasses make the calls."""

    _channel_kind: ChannelKind
    """Blocking or asyncio channels."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        samplers: str | Sequence[str] | None = None,
        token: str | None = None,
        tls: TlsOptions | None = None,
        deadlines: Deadlines | None = None,
        retry: RetryPolicy | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        """Connect to ``target`` (host:port): the one server, or with ``samplers`` the trainer.

        ``samplers``: where Generate, ComputeLogprobs, Tokenize and Detokenize
        go (every other call goes to ``target``): a gRPC target such as
        ``"dns:///tandem-sampler:50051"``, balanced over every address it
        resolves to with gRPC's ``round_robin`` policy, or a list of host:port
        addresses, each call starting on the next one; UNAVAILABLE moves on to
        another replica. ``token``: bearer token for every call. ``tls``: TLS
        or mutual-TLS options (None: plaintext). ``deadlines``: default seconds
        per kind of call. ``retry``: how UNAVAILABLE is retried. Channels
        connect lazily; nothing is sent until the first call.
        """
        self.settings = ConnectionSettings(
            target=target,
            samplers=samplers if samplers is None or isinstance(samplers, str) else tuple(samplers),
            token=token,
            tls=tls,
            deadlines=deadlines or Deadlines(),
            retry=retry or RetryPolicy(),
            max_message_bytes=max_message_bytes,
        )
        self._metadata = self.settings.metadata()
        self._routes = open_routes(self.settings, self._channel_kind)

    @property
    def target(self) -> str:
        """host:port of the server (with samplers: of the trainer)."""
        return self.settings.target

    def _retrying(self, rpc: str, timeout: float | None) -> Retrying:
        """The attempts of one call of ``rpc``, on its replicas, within ``timeout`` seconds (else the default for ``rpc``)."""
        replicas = self._routes.replicas(rpc)
        seconds = self.settings.deadlines.for_rpc(rpc) if timeout is None else timeout
        return Retrying(self.settings.retry, Deadline(seconds), replicas.order(), len(replicas), self._metadata)


def loaded_model(event: pb.LoadModelResponse) -> pb.ModelInfo | None:
    """The model of a LoadModel event, or None for a progress event."""
    return event.model if event.WhichOneof("event") == "model" else None


def missing_model_error() -> TandemError:
    """LoadModel's stream ended without the final model event (a server bug)."""
    return TandemError("LoadModel ended without reporting the loaded model")
