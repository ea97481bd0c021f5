"""Deadlines and retries: every call has a deadline; only UNAVAILABLE is retried, on the next replica or after a backoff."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc
from google.protobuf.message import Message

from tandem.errors import DeadlineExceeded, TandemError, from_rpc_error

Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Deadlines:
    """Default seconds a call may take, per kind of call; a method's ``timeout=`` overrides them.

    Loading takes minutes on a GPU, and a long generation or training step can
    take a while, so those get more room than the quick calls.
    """

    call: float = 60.0
    """Every RPC not named below: GetModel, UnloadModel, ComputeLogprobs, the adapter RPCs ..."""
    generate: float = 600.0
    """A whole Generate stream."""
    train_step: float = 600.0
    """One TrainStep."""
    load_model: float = 3600.0
    """A whole LoadModel stream."""

    @classmethod
    def every(cls, seconds: float) -> Deadlines:
        """The same deadline for every kind of call."""
        return cls(call=seconds, generate=seconds, train_step=seconds, load_model=seconds)

    def for_rpc(self, rpc: str) -> float:
        """The default for the TandemService method named ``rpc``."""
        return {"LoadModel": self.load_model, "Generate": self.generate, "TrainStep": self.train_step}.get(rpc, self.call)


RetryHook = Callable[[int, TandemError, float], None]
"""Called before each retry with (number of the failed attempt, starting at 1; its error; seconds to wait, 0 when the retry goes to another replica at once)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Retry a call that failed with UNAVAILABLE (server down, restarting or draining).

    A retry goes to the next replica of a list of addresses at once, while some
    replica has not been tried since the last wait; then the client waits.
    With one channel (one address, or a ``dns:///`` target balanced by
    ``round_robin``) every retry waits, and the channel picks the replica.
    Wait k (k = 1, 2, ...) is ``initial_backoff * multiplier**(k-1)``, capped at
    ``max_backoff``, with jitter that keeps it in [50 %, 100 %] of that. A
    stream is retried only while none of its responses has reached the caller.
    Retries never run past the call's deadline. Other codes are never retried:
    they would fail the same way again, or (TrainStep) must not run twice.
    """

    max_attempts: int = 5
    """Attempts in all, the first included; 1 turns retries off."""
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0
    on_retry: RetryHook | None = None
    """Optional hook, for logging."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoffs must be >= 0 and multiplier >= 1")

    def backoff(self, wait: int) -> float:
        """Seconds of wait number ``wait`` (1-based), jitter included."""
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** (wait - 1))
        return ceiling * random.uniform(0.5, 1.0)


class Deadline:
    """An absolute deadline for one call, shared by all of its attempts."""

    def __init__(self, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {seconds}")
        self._expires = time.monotonic() + seconds

    def remaining(self) -> float:
        """Seconds left; raises DeadlineExceeded when none are."""
        left = self._expires - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("the call's deadline passed while retrying")
        return left


class Attempt:
    """One try of a call, on one replica; ``with attempt:`` around the call records its failure.

    A ``grpc.RpcError`` raised inside the block is kept (as a
    :class:`~tandem.errors.TandemError`) for :class:`Retrying` to decide on,
    instead of propagating; anything else propagates.
    """

    def __init__(self, retrying: Retrying, stub: Any) -> None:
        self._retrying = retrying
        self.stub = stub
        """The generated stub of the replica this attempt goes to."""

    def call(self, rpc: str, request: Message) -> Any:
        """Start ``rpc`` with ``request`` on this attempt's replica, with the time left and the call's metadata."""
        method = getattr(self.stub, rpc)
        return method(request, timeout=self._retrying.deadline.remaining(), metadata=self._retrying.metadata)

    def delivered(self) -> None:
        """A response of this call reached the caller: from now on a failure is raised, never retried."""
        self._retrying.delivered = True

    def __enter__(self) -> Attempt:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None) -> bool:
        if not isinstance(error, grpc.RpcError):
            return False
        self._retrying.failure = from_rpc_error(error)
        return True


class Retrying:
    """The attempts of one call: the retry loop both clients use, each attempt on the next replica.

        for attempt in client_retrying:          # ``async for`` in the asyncio client
            with attempt:
                return attempt.call("GetModel", request)

    Iterating gives the first attempt at once. After a failure it gives the next
    one when the policy retries it: on the next replica right away while some
    replica of this call has not been tried since the last wait, else after the
    policy's backoff (``time.sleep`` or ``asyncio.sleep``). When the policy does
    not retry it (another code than UNAVAILABLE, attempts used up, the deadline
    too close, or a response already delivered), iterating raises the failure.
    The loop never ends on its own: the block returns, or iterating raises.
    """

    def __init__(self, policy: RetryPolicy, deadline: Deadline, replicas: Iterator[Any], count: int, metadata: Metadata) -> None:
        """``replicas`` yields the stub of each attempt in turn; ``count`` says how many distinct ones it cycles through."""
        self._policy = policy
        self.deadline = deadline
        self.metadata = metadata
        self._replicas = replicas
        self._count = count
        self._made = 0
        self.failure: TandemError | None = None
        """The last attempt's error, set by :class:`Attempt`."""
        self.delivered = False
        """Whether a response reached the caller (set by :meth:`Attempt.delivered`)."""

    def _delay(self) -> float:
        """Seconds to wait before the next attempt; raises the last failure when there is none."""
        if self._made == 0:
            return 0.0
        error = self.failure
        assert error is not None, "an attempt's block ended without returning or failing"
        if error.code != grpc.StatusCode.UNAVAILABLE or self.delivered or self._made >= self._policy.max_attempts:
            raise error
        delay = 0.0 if self._made % self._count else self._policy.backoff(self._made // self._count)
        try:
            left = self.deadline.remaining()
        except DeadlineExceeded:
            raise error from None
        if delay >= left:
            raise error
        if self._policy.on_retry is not None:
            self._policy.on_retry(self._made, error, delay)
        return delay

    def _attempt(self) -> Attempt:
        self._made += 1
        self.failure = None
        return Attempt(self, next(self._replicas))

    def __iter__(self) -> Retrying:
        return self

    def __next__(self) -> Attempt:
        delay = self._delay()
        if delay:
            time.sleep(delay)
        return self._attempt()

    def __aiter__(self) -> Retrying:
        return self

    async def __anext__(self) -> Attempt:
        delay = self._delay()
        if delay:
            await asyncio.sleep(delay)
        return self._attempt()
