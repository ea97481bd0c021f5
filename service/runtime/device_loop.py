"""The device loop: the one thread that runs all model work, in order.

Work arrives in one FIFO queue: calls (load, train, save ... any function of
the model) and generation requests. Generation requests are added to the
engine and decoded by ``engine.step()`` whenever the queue holds nothing else.
A call is a barrier: samples already running finish first (so every sample
comes from one adapter version), then the call runs, then generation resumes.
A call whose caller has gone (cancelled, deadline passed) before it starts is
skipped; a call that has started always runs to the end.
Whatever fails reaches its waiter: a call's exception is its future's; a
request the engine refuses (``add_request`` raises) ends its own Generate at
once, the other samples untouched; a failed engine step ends every running
sample's call. A domain error keeps its status; anything else the engine
raises becomes :class:`~service.errors.EngineFailed` with the engine's message.
So a Generate submitted after a TrainStep returned samples from the new
adapter. Aborts skip the queue.

Coroutines never touch the model: they submit work here and await futures
that this thread completes through ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from service.errors import EngineFailed, TandemError, Unavailable
from service.runtime.engines.base import Engine, EngineRequest
from service.runtime.specs import SampleChunk

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, eq=False)
class Inbox:
    """Where one Generate call receives its samples' chunks (or the error that ended them).

    The device loop hands over everything produced in one engine step with one
    ``call_soon_threadsafe`` per event loop, not one per chunk: with hundreds of
    concurrent calls, per-chunk wake-ups of the event loop cost more than the step.
    """

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


@dataclass
class _Call:
    fn: Callable[[], Any]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


@dataclass
class _Admit:
    requests: list[EngineRequest]
    inbox: Inbox
    engine: Engine


class DeviceLoop:
    """Runs model work on one thread; see the module docstring."""

    def __init__(self, name: str = "tandem-device") -> None:
        self._queue: deque[_Call | _Admit] = deque()
        self._aborts: list[str] = []
        self._inboxes: dict[str, Inbox] = {}
        self._aborted_before_admission: set[str] = set()
        self._engine: Engine | None = None
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the device thread."""
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Let queued work finish, then end the thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout)

    def set_engine(self, engine: Engine | None) -> None:
        """Switch the engine generation requests go to. Call only from the device thread (inside a call)."""
        self._engine = engine

    def call(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Run ``fn()`` on the device thread after everything queued before it; await the result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._enqueue(_Call(fn, future, loop))
        return future

    def admit(self, requests: list[EngineRequest], inbox: Inbox, expected_engine: Engine) -> None:
        """Queue samples for ``expected_engine``; their chunks arrive in ``inbox``.

        If the model (and so the engine) changed before they are admitted, the inbox gets Unavailable.
        """
        self._enqueue(_Admit(requests, inbox, expected_engine))

    def abort(self, request_ids: list[str]) -> None:
        """Stop these samples as soon as the device thread looks (ahead of queued work)."""
        with self._wake:
            self._aborts.extend(request_ids)
            self._wake.notify()

    def queue_depth(self) -> int:
        """Calls and generation batches waiting to start."""
        return len(self._queue)

    def running_requests(self) -> int:
        """Samples the engine holds, queued or decoding."""
        engine = self._engine
        return 0 if engine is None else engine.running_requests()

    def _enqueue(self, item: _Call | _Admit) -> None:
        with self._wake:
            if self._stopping:
                raise RuntimeError("device loop is stopping")
            self._queue.append(item)
            self._wake.notify()

    def _engine_busy(self) -> bool:
        return self._engine is not None and self._engine.has_unfinished_requests()

    def _next_item(self) -> tuple[_Call | _Admit | None, list[str]] | None:
        """Wait for work; None means stop."""
        with self._wake:
            while not (self._queue or self._aborts or self._engine_busy()):
                if self._stopping:
                    return None
                self._wake.wait()
            aborts, self._aborts = self._aborts, []
            head = self._queue[0] if self._queue else None
            if isinstance(head, _Admit) or (isinstance(head, _Call) and not self._engine_busy()):
                self._queue.popleft()
                return head, aborts
            return _DRAIN, aborts

    def _run(self) -> None:
        while (item := self._next_item()) is not None:
            work, aborts = item
            self._apply_aborts(aborts)
            try:
                if isinstance(work, _Call):
                    self._run_call(work)
                elif isinstance(work, _Admit):
                    self._admit(work)
                else:
                    self._step_engine()
            except Exception:  # each kind of work tells its own waiters; this keeps the thread alive regardless
                log.exception("device loop work failed")

    def _apply_aborts(self, request_ids: list[str]) -> None:
        """Forget and stop samples whose callers left; a failure here must not cost the work item already taken."""
        if not request_ids:
            return
        not_running = [request_id for request_id in request_ids if self._inboxes.pop(request_id, None) is None]
        if not_running:  # still queued, or already finished (then there is nothing to remember)
            with self._wake:
                queued = {r.request_id for item in self._queue if isinstance(item, _Admit) for r in item.requests}
            self._aborted_before_admission.update(queued.intersection(not_running))
        if self._engine is not None:
            try:
                self._engine.abort(request_ids)
            except Exception:  # their callers have gone: nobody to tell
                log.exception("engine abort failed")

    def _admit(self, admit: _Admit) -> None:
        if self._engine is not admit.engine:
            error = Unavailable("the model was replaced or unloaded while this request waited: send it again")
            _post([(admit.inbox, error)])
            return
        added: list[str] = []
        for request in admit.requests:
            if request.request_id in self._aborted_before_admission:
                self._aborted_before_admission.discard(request.request_id)
                continue
            try:
                self._engine.add_request(request)
            except Exception as error:
                log.exception("the engine refused request %s; failing its call", request.request_id)
                self._refuse(admit, added, error)
                return
            self._inboxes[request.request_id] = admit.inbox
            added.append(request.request_id)

    def _refuse(self, admit: _Admit, added: list[str], error: Exception) -> None:
        """End one Generate whose request the engine refused: its caller hears why, its other samples stop."""
        for request_id in added:
            del self._inboxes[request_id]
        self._aborted_before_admission.difference_update(r.request_id for r in admit.requests)
        _post([(admit.inbox, _engine_failure(error))])
        if added:
            self._engine.abort(added)

    def _step_engine(self) -> None:
        if self._engine is None:
            return
        try:
            outputs = self._engine.step()
        except Exception as error:
            log.exception("engine step failed; failing its running requests")
            self._fail_running(error)
            return
        deliveries = []
        for request_id, chunk in outputs:
            inbox = self._inboxes.get(request_id)
            if inbox is not None:
                deliveries.append((inbox, chunk))
            if chunk.finish_reason is not None:
                self._inboxes.pop(request_id, None)
        _post(deliveries)

    def _fail_running(self, error: Exception) -> None:
        inboxes, self._inboxes = self._inboxes, {}
        _post([(inbox, _engine_failure(error)) for inbox in set(inboxes.values())])
        if self._engine is not None:
            self._engine.abort(list(inboxes))

    @staticmethod
    def _run_call(call: _Call) -> None:
        # A caller that went away (cancel, deadline) before its work started gets nothing done:
        # a TrainStep the client saw fail must not be applied later. (Reading the state of an
        # asyncio future from this thread is a plain attribute read; once started, work completes.)
        if call.future.cancelled():
            return
        try:
            result = call.fn()
        except BaseException as error:  # handed to the awaiting coroutine
            call.loop.call_soon_threadsafe(_settle, call.future, None, error)
        else:
            call.loop.call_soon_threadsafe(_settle, call.future, result, None)


_DRAIN = object()
"""Marker: the engine has work (or must drain before the next call): step it."""


def _engine_failure(error: Exception) -> TandemError:
    """What a caller hears when the engine raised ``error``: a domain error as it is, else INTERNAL with the engine's words."""
    if isinstance(error, TandemError):
        return error
    return EngineFailed(f"the sampling engine failed: {type(error).__name__}: {error}")


def _post(deliveries: list[tuple[Inbox, SampleChunk | BaseException]]) -> None:
    """Hand items to their inboxes with one thread-safe call per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, SampleChunk | BaseException]]] = {}
    for inbox, item in deliveries:
        by_loop.setdefault(inbox.loop, []).append((inbox.queue, item))
    for loop, items in by_loop.items():
        loop.call_soon_threadsafe(_deliver, items)


def _deliver(items: list[tuple[asyncio.Queue, SampleChunk | BaseException]]) -> None:
    for queue, item in items:
        queue.put_nowait(item)


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
