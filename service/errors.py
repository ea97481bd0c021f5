"""Domain errors raised by the runtime, and the one table that maps them to gRPC codes.

Nothing here imports grpc: the runtime raises these, and the server's error
interceptor turns them into statuses through :data:`STATUS_NAME_BY_ERROR`.
"""

from __future__ import annotations


class TandemError(Exception):
    """Base of every error whose message is safe to show to the client."""


class InvalidArgument(TandemError):
    """A request field is wrong; the message names the field and what is allowed."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class ModelNotLoaded(TandemError):
    """The call needs a loaded model and none is loaded."""

    def __init__(self) -> None:
        super().__init__("no model is loaded: call LoadModel first")


class FailedPrecondition(TandemError):
    """The request is valid but the service is not in a state to run it."""


class NotFound(TandemError):
    """A named model or adapter does not exist."""


class AlreadyExists(TandemError):
    """A named adapter exists and the request did not ask to overwrite it."""


class ResourceExhausted(TandemError):
    """Out of memory, or over a load limit; the message names which."""


class Unavailable(TandemError):
    """The service is shutting down or the model is being replaced."""


class EngineFailed(TandemError):
    """The sampling engine raised something that is not a domain error; the message carries the engine's words."""


# Error class name -> grpc.StatusCode member name. The server turns names into
# codes so this module stays free of grpc; subclasses map through their bases.
STATUS_NAME_BY_ERROR: dict[type[TandemError], str] = {
    InvalidArgument: "INVALID_ARGUMENT",
    ModelNotLoaded: "FAILED_PRECONDITION",
    FailedPrecondition: "FAILED_PRECONDITION",
    NotFound: "NOT_FOUND",
    AlreadyExists: "ALREADY_EXISTS",
    ResourceExhausted: "RESOURCE_EXHAUSTED",
    Unavailable: "UNAVAILABLE",
    EngineFailed: "INTERNAL",
}


def status_name_for(error: TandemError) -> str:
    """The gRPC status code name for a domain error (walks the class hierarchy)."""
    for cls in type(error).__mro__:
        if cls in STATUS_NAME_BY_ERROR:
            return STATUS_NAME_BY_ERROR[cls]
    return "INTERNAL"
