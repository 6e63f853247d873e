"""The ``wave`` loop: drive one VM's target along ``wave.triangle_wave``.

The clock is injected so tests can run a 60 s period in a fraction of a second.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from balloonctl.wave import wave_schedule

__all__ = [
    "Clock",
    "ScaledClock",
    "Terminated",
    "WaveStep",
    "WaveTarget",
    "cancel_on_sigterm",
    "run_wave",
]

T = TypeVar("T")


class Terminated(Exception):
    """SIGTERM arrived while ``cancel_on_sigterm`` ran; the work was cancelled cleanly."""


async def cancel_on_sigterm(work: Awaitable[T]) -> T:
    """Await ``work``; on SIGTERM cancel it, as ``asyncio.run`` does on SIGINT, so its
    ``finally`` blocks run (the wave restores the original target), then raise
    ``Terminated``. Outside the main thread no handler can be installed: plain await.

    Raises:
        Terminated: SIGTERM arrived.
    """
    if threading.current_thread() is not threading.main_thread():
        return await work
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    got: list[bool] = []

    def on_sigterm() -> None:
        got.append(True)
        task.cancel()

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        return await work
    except asyncio.CancelledError:
        if not got:
            raise
        task.uncancel()
        raise Terminated("terminated by SIGTERM") from None
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


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
