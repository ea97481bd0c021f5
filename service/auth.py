"""Bearer-token authentication: a server interceptor that refuses calls without the token.

Every call must carry ``authorization: Bearer <token>`` metadata; the token is
compared in constant time (``hmac.compare_digest``). Health checks are exempt
so Kubernetes probes, which cannot send metadata, keep working.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

import grpc

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)
_SCHEME = "bearer "


def _presented_token(metadata: tuple[tuple[str, str | bytes], ...] | None) -> bytes | None:
    """The token of the first ``authorization`` entry, or None when there is none or it is not a bearer token."""
    for key, value in metadata or ():
        if key != "authorization":
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        if text[: len(_SCHEME)].lower() != _SCHEME:
            return None
        return text[len(_SCHEME):].strip().encode()
    return None


def _rejecting_handler(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that aborts with UNAUTHENTICATED before reading the request."""

    async def reject(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    factories: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler]] = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    factory = factories[(handler.request_streaming, handler.response_streaming)]
    return factory(reject, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call but health with UNAUTHENTICATED unless it carries the bearer token."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("the bearer token must not be empty")
        self._token = token.encode()

    async def intercept_service(self, continuation, handler_call_details: grpc.HandlerCallDetails):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(EXEMPT_PREFIXES):
            return handler
        presented = _presented_token(handler_call_details.invocation_metadata)
        if presented is None:
            return _rejecting_handler(handler, "missing bearer token: send metadata 'authorization: Bearer <token>'")
        if not hmac.compare_digest(presented, self._token):
            return _rejecting_handler(handler, "invalid bearer token: check the token the server was started with")
        return handler
