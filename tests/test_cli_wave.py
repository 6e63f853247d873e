"""The wave loop with a virtual clock: no real time passes, the shape is exact."""

from __future__ import annotations

import asyncio

import pytest

from balloonctl.cli.wave import ScaledClock, WaveStep, run_wave
from balloonctl.errors import QMPCommandError
from balloonctl.units import MiB


class VirtualClock:
    """Time moves only when someone sleeps."""

    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += max(0.0, seconds)
        await asyncio.sleep(0)


class Balloon:
    """A VM whose balloon follows every target at once; can fail on the n-th target."""

    def __init__(self, actual: int, fail_at: int | None = None) -> None:
        self.actual = actual
        self.sent: list[int] = []
        self.fail_at = fail_at

    async def set_target(self, spec: int, *, force: bool = False) -> int:
        if self.fail_at is not None and len(self.sent) == self.fail_at:
            self.fail_at = None
            raise QMPCommandError("boom", vm="vm1")
        self.sent.append(spec)
        self.actual = spec
        return spec

    async def query_actual(self) -> int:
        return self.actual


def wave(vm: Balloon, clock: VirtualClock, steps: list[WaveStep], **kw: object) -> None:
    args: dict[str, object] = {"original": 2048 * MiB, "minimum": 500 * MiB,
                               "maximum": 1500 * MiB, "period": 60.0, "step": 7.5,
                               "cycles": 2, "clock": clock, "emit": steps.append}
    args.update(kw)
    asyncio.run(run_wave(vm, **args))  # type: ignore[arg-type]


def test_two_cycles_of_a_triangle_then_restore() -> None:
    vm, clock = Balloon(2048 * MiB), VirtualClock()
    steps: list[WaveStep] = []
    wave(vm, clock, steps)
    mib = [s.target // MiB for s in steps]
    one = [1500, 1250, 1000, 750, 500, 750, 1000, 1250]
    assert mib == [*one, *one, 1500, 2048]
    assert [s.t for s in steps[:-1]] == [i * 7.5 for i in range(17)]
    assert steps[-1].restore and not any(s.restore for s in steps[:-1])
    assert clock.t == 120.0  # exactly two periods of virtual time
    assert vm.actual == 2048 * MiB


def test_a_failure_mid_wave_still_restores() -> None:
    vm, clock = Balloon(2048 * MiB, fail_at=3), VirtualClock()
    steps: list[WaveStep] = []
    with pytest.raises(QMPCommandError):
        wave(vm, clock, steps)
    assert steps[-1].restore and vm.sent[-1] == 2048 * MiB


def test_cancellation_restores_the_original_target() -> None:
    vm = Balloon(1800 * MiB)
    steps: list[WaveStep] = []

    async def scenario() -> None:
        five = asyncio.Event()

        def emit(step: WaveStep) -> None:
            steps.append(step)
            if len(steps) == 5:
                five.set()

        task = asyncio.create_task(run_wave(
            vm, original=1800 * MiB, minimum=500 * MiB, maximum=1500 * MiB, period=60.0,
            step=1.0, cycles=None, clock=ScaledClock(speed=1000.0), emit=emit))
        await five.wait()  # a few steps of a wave that would run forever
        task.cancel()  # what asyncio.run does on Ctrl-C
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert steps[-1].restore and steps[-1].target == 1800 * MiB
    assert vm.actual == 1800 * MiB


def test_scaled_clock_runs_faster() -> None:
    import time

    clock = ScaledClock(speed=10.0)

    async def nap() -> tuple[float, float, float]:
        outer_start = time.monotonic()
        start = clock.now()
        inner_start = time.monotonic()
        await clock.sleep(5.0)  # half a second of real time
        inner_end = time.monotonic()
        end = clock.now()
        outer_end = time.monotonic()
        return end - start, inner_end - inner_start, outer_end - outer_start

    advanced, inner, outer = asyncio.run(nap())
    # The clock's reading brackets the real time between its two readings, times ten:
    # exact, whatever the machine's load.
    assert 10.0 * inner <= advanced <= 10.0 * outer
    assert advanced >= 5.0  # it slept at least the 5 s of clock time asked for
    assert inner < 2.5  # in a tenth of the real time, give or take a busy machine
    with pytest.raises(ValueError):
        ScaledClock(speed=0)


def test_a_scaled_clock_starts_at_zero_and_never_sleeps_negative_time() -> None:
    clock = ScaledClock(speed=1000.0)
    assert 0.0 <= clock.now() < 1000.0

    async def nap() -> float:
        start = clock.now()
        await clock.sleep(-5.0)  # a step already late: no sleep at all
        return clock.now() - start

    assert asyncio.run(nap()) < 1000.0
