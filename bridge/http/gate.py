"""A per-host gate: at most N requests at once; the others wait, first come first served."""

from __future__ import annotations

import asyncio
import collections
from types import TracebackType


class Gate:
    """Like asyncio.Semaphore, but a released slot goes straight to the longest waiter.

    The daemon starts the polls due in the same second together, so hundreds can wait on one
    host's gate. asyncio.Semaphore (3.11) searches its queue to wake a waiter and again to remove
    the woken one; in pass 3 of the benchmark (10,000 sources of one host, 10 slots) acquiring
    was a tenth of a poll's CPU. Here waiting and handing a slot over are O(1).
    """

    __slots__ = ("_free", "_waiters")

    def __init__(self, size: int):
        if size < 1:
            raise ValueError("a gate needs at least one slot")
        self._free = size
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def waiting(self) -> int:
        """How many are queued (cancelled waiters included until their turn comes)."""
        return len(self._waiters)

    async def __aenter__(self) -> None:
        if self._free > 0:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot just as it was cancelled: pass the slot on
            raise  # a cancelled waiter stays queued; _release skips it

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release()

    def _release(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1
