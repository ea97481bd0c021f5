"""The ordering promise for an engine that runs outside the device loop: generations share, calls are exclusive.

A Generate holds a shared hold on the barrier for as long as its samples run;
model work (a TrainStep, a checkpoint load, an adapter install ...) takes it
exclusively. Holds are granted in arrival order: a call waits for the
generations admitted before it, and generations that arrive after the call
wait for it to finish. That is the device loop's promise (see
``device_loop.py``) kept on the event loop, so every sample comes from one
adapter version and a Generate sent after a TrainStep returned samples from
the new adapter.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field


@dataclass
class _Waiter:
    exclusive: bool
    granted: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class OrderedBarrier:
    """A first-come-first-served shared/exclusive lock for asyncio tasks."""

    def __init__(self) -> None:
        self._shared_holders = 0
        self._exclusive_held = False
        self._waiters: deque[_Waiter] = deque()

    @property
    def shared_holders(self) -> int:
        """Generations holding the barrier now."""
        return self._shared_holders

    @property
    def waiting(self) -> int:
        """Holds requested and not yet granted."""
        return len(self._waiters)

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        """Hold the barrier beside other generations (after every call that arrived earlier)."""
        await self._acquire(exclusive=False)
        try:
            yield
        finally:
            self._release(exclusive=False)

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold the barrier alone (after every generation and call that arrived earlier)."""
        await self._acquire(exclusive=True)
        try:
            yield
        finally:
            self._release(exclusive=True)

    async def _acquire(self, exclusive: bool) -> None:
        if not self._waiters and self._free_for(exclusive):
            self._take(exclusive)
            return
        waiter = _Waiter(exclusive)
        self._waiters.append(waiter)
        try:
            await waiter.granted
        except asyncio.CancelledError:
            if waiter.granted.done() and not waiter.granted.cancelled():
                self._release(exclusive)  # granted just as the caller went away: hand it on
            else:
                self._waiters.remove(waiter)
                self._grant()
            raise

    def _release(self, exclusive: bool) -> None:
        if exclusive:
            self._exclusive_held = False
        else:
            self._shared_holders -= 1
        self._grant()

    def _free_for(self, exclusive: bool) -> bool:
        if self._exclusive_held:
            return False
        return self._shared_holders == 0 if exclusive else True

    def _take(self, exclusive: bool) -> None:
        if exclusive:
            self._exclusive_held = True
        else:
            self._shared_holders += 1

    def _grant(self) -> None:
        """Wake waiters from the front while their kind of hold is free."""
        while self._waiters and self._free_for(self._waiters[0].exclusive):
            waiter = self._waiters.popleft()
            self._take(waiter.exclusive)
            waiter.granted.set_result(None)
