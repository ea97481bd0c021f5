"""The server interceptor: concurrency limit, domain errors -> gRPC status (one table), per-RPC metrics.

Wraps every TandemService handler. A call over ``max_concurrent_rpcs`` is
refused with RESOURCE_EXHAUSTED. A domain error becomes its status code with
its message; anything unexpected becomes INTERNAL with a generic message (the
details go to the log, never to the client).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from tandem.v1 import tandem_pb2

from service.errors import ResourceExhausted, TandemError, status_name_for
from service.metrics import Metrics
from service.wire import undecodable_request

log = logging.getLogger(__name__)
SERVICE_PREFIX = "/tandem.v1.TandemService/"
_METHODS = tandem_pb2.DESCRIPTOR.services_by_name["TandemService"].methods_by_name
Decoder = Callable[[bytes], Any]


class CallGate:
    """Counts TandemService calls in flight and refuses those over the limit.

    Health and reflection are not counted, so probes answer under any load.
    (gRPC's own ``maximum_concurrent_rpcs`` counts every service and its
    message does not name the limit.) ``with gate:`` holds one slot for the
    duration of a call.
    """

    def __init__(self, max_concurrent_rpcs: int) -> None:
        self._limit = max_concurrent_rpcs
        self.in_flight = 0

    def __enter__(self) -> None:
        """Take a slot; ResourceExhausted when none is free."""
        if self.in_flight >= self._limit:
            raise ResourceExhausted(f"{self.in_flight} calls are running: over max_concurrent_rpcs={self._limit}; retry later")
        self.in_flight += 1

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: Any) -> None:
        """Give the slot back."""
        self.in_flight -= 1


class _CallOutcome:
    """Records one RPC's status code and latency when it ends."""

    def __init__(self, metrics: Metrics, rpc: str, context: grpc.aio.ServicerContext) -> None:
        self._metrics, self._rpc, self._context = metrics, rpc, context
        self._started = time.perf_counter()
        self.code = "OK"

    def failed(self, error: Exception) -> str:
        """Note the status for ``error``; the message to send with it."""
        if isinstance(error, TandemError):
            self.code = status_name_for(error)
            return str(error)
        incident = uuid.uuid4().hex[:12]
        log.error("unexpected error in %s (incident %s)", self._rpc, incident, exc_info=error)
        self.code = "INTERNAL"
        return f"internal error (incident {incident}); the server log has the details"

    def cancelled(self) -> None:
        """The client went away or its deadline passed."""
        remaining = self._context.time_remaining()
        self.code = "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"

    def finish(self) -> None:
        """Count the call."""
        self._metrics.record_request(self._rpc, self.code, time.perf_counter() - self._started)

    async def __aenter__(self) -> _CallOutcome:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: Any) -> bool:
        """Count the call, then end it: an exception becomes its status (the abort raises). Counting comes
        first, so a client that has its status finds the call in the metrics."""
        if isinstance(error, asyncio.CancelledError):
            self.cancelled()
        elif isinstance(error, Exception):
            message = self.failed(error)
            self.finish()
            await self._context.abort(grpc.StatusCode[self.code], message)
        self.finish()
        return False


def _request_decoder(rpc: str, deserializer: Decoder) -> Decoder:
    """Parse the request inside the handler, so bytes that do not decode become INVALID_ARGUMENT naming the field
    (gRPC's own deserialization failure is UNKNOWN with protobuf's wording)."""
    input_type = _METHODS[rpc].input_type

    def decode(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except DecodeError as error:
            raise undecodable_request(raw, input_type, error) from None

    return decode


def _wrap_unary(metrics: Metrics, gate: CallGate, rpc: str, decode: Decoder, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        async with _CallOutcome(metrics, rpc, context):
            request = decode(raw)
            with gate:
                return await behavior(request, context)

    return handle


def _wrap_stream(metrics: Metrics, gate: CallGate, rpc: str, decode: Decoder, behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., Awaitable[None]]:
    """A coroutine handler that writes each response itself.

    Not an async generator: when the client cancels or its deadline passes
    while a response is being sent, the cancellation lands here, so the
    behavior's generator is closed at once (its ``finally`` aborts the engine
    work). A generator handler suspended at ``yield`` would only be closed
    when the garbage collector finds it.
    """

    async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> None:
        async with _CallOutcome(metrics, rpc, context):
            request = decode(raw)
            with gate:
                async with aclosing(behavior(request, context)) as responses:
                    async for response in responses:
                        await context.write(response)

    return handle


class ErrorsAndMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Limits concurrency, maps domain errors to statuses and records tandem_requests_total / latency for TandemService RPCs."""

    def __init__(self, metrics: Metrics, gate: CallGate) -> None:
        self._metrics = metrics
        self._gate = gate
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        """Each method's handler as this interceptor wraps it, built on the method's first call (a method's
        handler never changes), so a call costs one lookup."""

    async def intercept_service(self, continuation, handler_call_details: grpc.HandlerCallDetails):
        method = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            handler = self._wrap(method, await continuation(handler_call_details))
            if handler is not None:
                self._handlers[method] = handler
        return handler

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler | None:
        """The handler a TandemService method runs with (the others' pass through as they are)."""
        if handler is None or not method.startswith(SERVICE_PREFIX):
            return handler
        rpc = method[len(SERVICE_PREFIX):]
        decode = _request_decoder(rpc, handler.request_deserializer)
        wrap = dict(metrics=self._metrics, gate=self._gate, rpc=rpc, decode=decode)
        raw_in = dict(request_deserializer=None, response_serializer=handler.response_serializer)  # handlers get bytes and decode them
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(_wrap_unary(behavior=handler.unary_unary, **wrap), **raw_in)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(_wrap_stream(behavior=handler.unary_stream, **wrap), **raw_in)
        return handler
