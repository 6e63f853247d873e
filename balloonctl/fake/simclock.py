"""Simulated time for a fake fleet: advanced by the fleet's timer, never skipped.

Every tick of a ``Ticker`` built with a ``SimClock`` moves simulated time on by exactly
``interval * speed`` seconds, however late the tick ran: when the event loop is busy the
simulation slows down instead of jumping ahead, so a guest's workload never loses steps.
Code that paces itself on the simulation (``balloonctl experiment``) sleeps on the same
clock (``sleep``), and reads the simulated ``time.time()`` from ``wall`` (what the fake
reports as the stats' ``last-update``).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time

__all__ = ["SimClock"]


class SimClock:
    """``speed`` simulated seconds per wall second (at most: see the module docstring).

    ``now()`` starts at 0; ``wall()`` at the real ``time.time()`` of creation (or ``epoch``).
    """

    def __init__(self, speed: float = 1.0, *, epoch: float | None = None) -> None:
        """Raises: ValueError: ``speed`` is not positive."""
        if not speed > 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self.epoch = time.time() if epoch is None else epoch
        self._t = 0.0
        self._order = itertools.count()
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []

    def now(self) -> float:
        """Simulated seconds since the clock started."""
        return self._t

    def wall(self) -> float:
        """The simulated ``time.time()``."""
        return self.epoch + self._t

    def advance(self, seconds: float) -> None:
        """Move simulated time on and wake the sleepers whose time has come (they run once
        the caller yields to the loop, after the tick that advanced the clock)."""
        self._t += max(0.0, seconds)
        heap = self._sleepers
        while heap and heap[0][0] <= self._t:
            _, _, fut = heapq.heappop(heap)
            if not fut.done():
                fut.set_result(None)

    async def sleep(self, seconds: float) -> None:
        """Wait until ``seconds`` of simulated time have passed (at least one loop turn)."""
        await self.sleep_until(self._t + seconds)

    async def sleep_until(self, t: float) -> None:
        """Wait until simulated time reaches ``t`` (at least one loop turn)."""
        if t <= self._t:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (t, next(self._order), fut))
        await fut
