"""One shared timer for many fake VMs: a single asyncio task ticks them all."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from balloonctl.fake.simclock import SimClock

__all__ = ["Tickable", "Ticker"]

log = logging.getLogger(__name__)


class Tickable(Protocol):
    def on_tick(self, now: float, wall: float) -> None: ...


class Ticker:
    """Calls ``on_tick(now, wall)`` on every member every ``interval`` seconds.

    ``now`` is the loop's monotonic clock, ``wall`` is ``time.time()``. The task starts with
    the first member and ends with the last. With a ``SimClock`` every tick advances it by
    ``interval * clock.speed`` and passes its ``now()`` and ``wall()`` instead.
    """

    def __init__(self, interval: float, *, clock: SimClock | None = None) -> None:
        self.interval = interval
        self.clock = clock
        self._members: list[Tickable] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, member: Tickable) -> None:
        if member not in self._members:
            self._members.append(member)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def remove(self, member: Tickable) -> None:
        with contextlib.suppress(ValueError):
            self._members.remove(member)

    async def stop(self) -> None:
        self._members.clear()
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        members = self._members
        while members:
            await asyncio.sleep(self.interval)
            clock = self.clock
            if clock is None:
                now, wall = loop.time(), time.time()
            else:
                clock.advance(self.interval * clock.speed)
                now, wall = clock.now(), clock.wall()
            # on_tick never awaits, so nobody can join or leave during this loop.
            for member in members:
                try:
                    member.on_tick(now, wall)
                except Exception:
                    log.exception("fake VM tick failed: %r", member)
