"""Tandem client: drive a Tandem server (load, generate, train, adapters) from Python.

``Client`` is synchronous, ``AsyncClient`` (in :mod:`tandem.aio`) is for
asyncio; both raise the typed exceptions in :mod:`tandem.errors`. The
generated stubs live in ``tandem.v1`` (``tandem_pb2``, ``tandem_pb2_grpc``).
The package depends on grpcio and protobuf only.
"""

from tandem.aio import AsyncClient
from tandem.client import Client
from tandem.completions import Completion
from tandem.connection import ConnectionSettings, TlsOptions
from tandem.errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    TandemError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from tandem.retry import Deadlines, RetryPolicy

__all__ = [
    "Aborted",
    "AlreadyExists",
    "AsyncClient",
    "Cancelled",
    "Client",
    "Completion",
    "ConnectionSettings",
    "DataLoss",
    "DeadlineExceeded",
    "Deadlines",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "RetryPolicy",
    "TandemError",
    "TlsOptions",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
]
