"""Deadlines and retries: every call has a deadline; only UNAVAILABLE is retried, with backoff."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from tandem.errors import DeadlineExceeded, TandemError


@dataclass(frozen=True)
class Deadlines:
    """Default seconds a call may take, per kind of call; a method's ``timeout=`` overrides them.

    Loading takes minutes on a GPU, and a long generation or training step can
    take a while, so those get more room than the quick calls.
    """

    call: float = 60.0
    """GetModel, UnloadModel, ComputeLogprobs and the adapter RPCs."""
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


RetryHook = Callable[[int, TandemError, float], None]
"""Called before each retry with (attempt number starting at 1, the error, seconds to wait)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Retry a call that failed with UNAVAILABLE (server down, restarting or draining).

    The wait before retry k (k = 1, 2, ...) is ``initial_backoff * multiplier**(k-1)``,
    capped at ``max_backoff``, with jitter that keeps it in [50 %, 100 %] of that.
    A stream is retried only if it failed before its first response. Retries
    never run past the call's deadline. Other codes are never retried: they
    would fail the same way again, or (TrainStep) must not run twice.
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

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based), jitter included."""
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
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


class Attempts:
    """Book-keeping for one call's attempts under a policy and a deadline."""

    def __init__(self, policy: RetryPolicy, deadline: Deadline) -> None:
        self._policy = policy
        self.deadline = deadline
        self._made = 1

    def wait_before_retry(self, error: TandemError) -> float | None:
        """Seconds to wait before trying again after ``error``, or None to give up and raise it."""
        if error.code != grpc.StatusCode.UNAVAILABLE or self._made >= self._policy.max_attempts:
            return None
        delay = self._policy.backoff(self._made)
        try:
            if delay >= self.deadline.remaining():
                return None
        except DeadlineExceeded:
            return None
        if self._policy.on_retry is not None:
            self._policy.on_retry(self._made, error, delay)
        self._made += 1
        return delay
