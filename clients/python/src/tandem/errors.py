"""Typed exceptions for failed calls: one class per gRPC status code, all carrying the code.

Every client method raises a :class:`TandemError` subclass instead of a raw
``grpc.RpcError``::

    try:
        client.generate("hi")
    except tandem.FailedPrecondition as error:   # no model loaded
        print(error.code, error.details)
"""

from __future__ import annotations

import grpc


class TandemError(Exception):
    """A call failed; ``code`` is its gRPC status code and ``details`` the server's message."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, details: str, code: grpc.StatusCode | None = None) -> None:
        if code is not None:
            self.code = code
        self.details = details
        super().__init__(f"{self.code.name}: {details}")


class Cancelled(TandemError):
    """The call was cancelled (by the client, or the server aborted it)."""

    code = grpc.StatusCode.CANCELLED


class InvalidArgument(TandemError):
    """A request field is wrong; the details name the field."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(TandemError):
    """The call's deadline passed before it finished."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(TandemError):
    """A named model or adapter does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(TandemError):
    """A named adapter exists and the request did not ask to overwrite it."""

    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(TandemError):
    """The caller is known but not allowed to do this."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(TandemError):
    """Out of memory or over a limit; the details name which."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(TandemError):
    """The service is not in a state to run the call (for example: no model loaded)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(TandemError):
    """The operation was aborted by a conflicting one."""

    code = grpc.StatusCode.ABORTED


class OutOfRange(TandemError):
    """A value is past the valid range."""

    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(TandemError):
    """The server does not implement this RPC."""

    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(TandemError):
    """The server failed unexpectedly; its log has the details."""

    code = grpc.StatusCode.INTERNAL


class Unavailable(TandemError):
    """The server cannot be reached or is shutting down; the only code the client retries."""

    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(TandemError):
    """Unrecoverable data loss or corruption."""

    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(TandemError):
    """The bearer token is missing or wrong."""

    code = grpc.StatusCode.UNAUTHENTICATED


_ERROR_BY_CODE: dict[grpc.StatusCode, type[TandemError]] = {
    cls.code: cls
    for cls in (
        Cancelled,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}


def error_for(code: grpc.StatusCode, details: str) -> TandemError:
    """The typed exception for a status code (``TandemError`` itself for UNKNOWN or an unexpected code)."""
    cls = _ERROR_BY_CODE.get(code)
    return cls(details) if cls is not None else TandemError(details, code)


def from_rpc_error(error: grpc.RpcError) -> TandemError:
    """Convert a ``grpc.RpcError`` (sync or asyncio) into its typed exception."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    return error_for(code or grpc.StatusCode.UNKNOWN, details or "")
