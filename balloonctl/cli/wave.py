"""The ``wave`` loop: drive one VM's target along ``policy.triangle_wave``.

The clock is injected so tests can run a 60 s period in a fraction of a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from balloonctl.policy import wave_schedule

__all__ = ["Clock", "ScaledClock", "WaveStep", "WaveTarget", "run_wave"]


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class ScaledClock:
    """Wall-clock time running ``speed`` times faster than real time."""

    def __init__(self, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self._origin = time.monotonic()

    def now(self) -> float:
        return (time.monotonic() - self._origin) * self.speed

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)


class WaveTarget(Protocol):
    """What the wave needs of a VM (``BalloonClient`` fits)."""

    async def set_target(self, spec: int, *, force: bool = False) -> int: ...

    async def query_actual(self) -> int: ...


@dataclass(frozen=True, slots=True)
class WaveStep:
    t: float  # seconds of wave time since the start
    target: int
    actual: int | None
    restore: bool = False  # the final step that put back the original target


async def run_wave(
    vm: WaveTarget,
    *,
    original: int,
    minimum: int,
    maximum: int,
    period: float,
    step: float,
    cycles: int | None,
    clock: Clock,
    emit: Callable[[WaveStep], None],
    force: bool = False,
) -> None:
    """Set the target at every step of the wave and ``emit`` each step. However it ends
    (the last cycle, an error, or cancellation by Ctrl-C), the original target is set
    again and emitted as a ``restore`` step.

    Raises:
        BalloonError: from the VM (the original target is still restored when possible).
    """
    start = clock.now()
    t = 0.0
    try:
        for t, target in wave_schedule(
            minimum=minimum, maximum=maximum, period=period, step=step, cycles=cycles
        ):
            await clock.sleep(start + t - clock.now())
            sent = await vm.set_target(target, force=force)
            emit(WaveStep(t, sent, await vm.query_actual()))
    finally:
        # Runs on Ctrl-C too: asyncio.run cancels the main task on SIGINT and waits for it.
        sent = await vm.set_target(original, force=True)
        emit(WaveStep(t, sent, await vm.query_actual(), restore=True))
