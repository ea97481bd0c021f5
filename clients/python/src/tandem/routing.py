"""Which server each call goes to: the trainer, or one of the sampler replicas.

The adapter being trained, its optimizer and its checkpoints live in the
trainer alone, so every call that reads or changes them goes there; sampling
calls (Generate, ComputeLogprobs, Tokenize, Detokenize) go to the samplers,
which serve the adapter versions the trainer publishes. A client given only
one address sends everything to it.

Samplers are either one gRPC target balanced by gRPC's ``round_robin`` policy
(``dns:///tandem-sampler:50051`` resolving to every replica, as a Kubernetes
headless Service does; or ``ipv4:///10.0.0.1:50051,10.0.0.2:50051``), or a
list of addresses, one channel each, where each call starts on the next
address and a retry moves on to the one after it.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from tandem.connection import ChannelKind, ConnectionSettings
from tandem.v1 import tandem_pb2_grpc

SAMPLER_RPCS = frozenset({"Generate", "ComputeLogprobs", "Tokenize", "Detokenize"})
"""RPCs any sampler serves; every other RPC goes to the trainer."""

ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
"""Service config of a sampler target: spread calls over every address it resolves to."""


def parse_samplers(text: str) -> str | tuple[str, ...]:
    """A ``--samplers`` flag's value: a gRPC target with a scheme (``dns:///name:port``) as it is, else comma-separated ``host:port`` addresses."""
    if ":///" in text:
        return text
    addresses = tuple(address.strip() for address in text.split(",") if address.strip())
    if not addresses:
        raise ValueError(f"no sampler address in {text!r}")
    return addresses


class Replicas:
    """The stubs that serve one kind of call; each call starts on the next one, a retry moves on."""

    def __init__(self, stubs: Sequence[Any]) -> None:
        self._stubs = tuple(stubs)
        self._calls = itertools.count()

    def __len__(self) -> int:
        return len(self._stubs)

    def order(self) -> Iterator[Any]:
        """The stubs for one call's attempts, cycling, starting one further than the previous call did."""
        start = next(self._calls)
        return (self._stubs[(start + attempt) % len(self._stubs)] for attempt in itertools.count())


@dataclass(frozen=True)
class Routes:
    """The channels of a client and which replicas each RPC may go to."""

    channels: tuple[Any, ...]
    """Every channel opened, for closing."""
    trainer: Replicas
    samplers: Replicas

    def replicas(self, rpc: str) -> Replicas:
        """Where ``rpc`` (a TandemService method name) goes."""
        return self.samplers if rpc in SAMPLER_RPCS else self.trainer


def open_routes(settings: ConnectionSettings, kind: ChannelKind) -> Routes:
    """Open the trainer's channel and the samplers' (the same one when no samplers are set)."""
    if settings.samplers is not None and not settings.samplers:
        raise ValueError("samplers: give a gRPC target or at least one host:port address (None: the target serves them)")
    trainer = settings.open_channel(settings.target, kind)
    if settings.samplers is None:
        samplers = [trainer]
    elif isinstance(settings.samplers, str):
        samplers = [settings.open_channel(settings.samplers, kind, service_config=ROUND_ROBIN)]
    else:
        samplers = [settings.open_channel(address, kind) for address in settings.samplers]
    stub = tandem_pb2_grpc.TandemServiceStub
    channels = tuple(dict.fromkeys([trainer, *samplers]))
    return Routes(channels, Replicas([stub(trainer)]), Replicas([stub(channel) for channel in samplers]))
