"""``balloonctl wave``: drive one VM's target along ``wave.triangle_wave``.

The loop (``run_wave``) takes an injected clock so tests can run a 60 s period in a fraction
of a second; the command (``wave``) parses, runs it on a ``BalloonClient`` and prints steps.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Protocol, TypeVar

import typer

from balloonctl.cli import completers
from balloonctl.cli.common import (
    FormatOpt,
    JsonOpt,
    duration,
    out,
    output_format,
    run,
    settings,
    watching_stdout,
)
from balloonctl.cli.exitcodes import ExitCode
from balloonctl.cli.output import Format, render_records, size
from balloonctl.errors import UnsafeTarget, UsageError
from balloonctl.units import format_size, parse_size
from balloonctl.wave import check_wave, wave_schedule

__all__ = [
    "Clock",
    "ScaledClock",
    "Terminated",
    "WaveStep",
    "WaveTarget",
    "cancel_on_sigterm",
    "run_wave",
    "wave",
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


def wave(
    vm: Annotated[str | None, typer.Argument(
        metavar="VM", help="The VM to balloon up and down (may be left out when one --qmp "
                           "names it).",
        autocompletion=completers.typer_callback("vm"), show_default=False,
    )] = None,
    minimum: Annotated[str, typer.Option(
        "--min", metavar="SIZE", help="The bottom of the wave.",
        autocompletion=completers.typer_callback("minimum"),
    )] = "500M",
    maximum: Annotated[str, typer.Option(
        "--max", metavar="SIZE", help="The top of the wave (and where it starts).",
        autocompletion=completers.typer_callback("maximum"),
    )] = "1500M",
    period: Annotated[str, typer.Option(
        "--period", "-p", metavar="DURATION", help="One full cycle, top to top.",
    )] = "60s",
    step: Annotated[str | None, typer.Option(
        "--step", metavar="DURATION", help="Time between targets (default: period/20).",
    )] = None,
    cycles: Annotated[int | None, typer.Option(
        "--cycles", "-c", min=1, metavar="N", help="Stop after N cycles (default: forever).",
    )] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Allow --min below the VM's safe floor.",
    )] = False,
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
    speed: Annotated[float, typer.Option("--speed", hidden=True, min=0.001)] = 1.0,
) -> None:
    """Balloon a VM up and down along a triangular wave (the RFC's first experiment),
    printing each step. Ctrl-C restores the original target."""
    fmt = output_format(fmt, as_json)
    low, high = parse_size(minimum), parse_size(maximum)
    cycle = duration(period, "--period") or 60.0
    every = duration(step, "--step") or cycle / 20
    check_wave(minimum=low, maximum=high, period=cycle, step=every)
    single = settings().single() if vm is None else None
    if vm is None and single is None:
        raise UsageError("name the VM (wave takes one VM)")
    ref = single or settings().inventory().select_one(vm or "", command="wave")
    steps: list[dict[str, Any]] = []
    from balloonctl.cli.journaling import record_targets

    record_targets("wave", f"wave between {minimum} and {maximum}, period {period}")

    def emit(s: WaveStep) -> None:
        record = {"name": ref.name, "t": round(s.t, 3), "target": s.target, "actual": s.actual,
                  "restore": s.restore}
        steps.append(record)
        if fmt is Format.TABLE:
            if len(steps) == 1:
                out(f"{'T':>8}  {'TARGET':>7}  {'ACTUAL':>7}  NOTE".rstrip())
            note_ = "restored the original target" if s.restore else ""
            out(f"{s.t:7.1f}s  {size(s.target):>7}  {size(s.actual):>7}  {note_}".rstrip())
        elif fmt is Format.NDJSON:
            out(json.dumps(record, separators=(",", ":")))
        elif fmt is Format.CSV:
            out(render_records([record], fmt, csv_header=len(steps) == 1))

    async def go() -> None:
        async with settings().client(ref) as c:
            await c.resolve_target(low, force=force)
            await c.resolve_target(high, force=force)
            original = await c.current_target() or await c.query_actual()
            try:  # the restore must be possible before anything moves
                await c.resolve_target(original, force=True)
            except UnsafeTarget as exc:
                raise UnsafeTarget(
                    f"will not start: the wave could not set the original target "
                    f"{format_size(original)} again when it ends ({exc.message}); set a "
                    "target within the VM's limits first", vm=ref.name, target=original,
                ) from None
            await run_wave(c, original=original, minimum=low, maximum=high, period=cycle,
                           step=every, cycles=cycles, clock=ScaledClock(speed), emit=emit,
                           force=force)

    try:
        # SIGTERM ends the wave as Ctrl-C does: the original target is set again first
        run(cancel_on_sigterm(watching_stdout(go())))
    except Terminated:
        raise typer.Exit(int(ExitCode.TERMINATED)) from None
    finally:
        if fmt is Format.JSON:
            out(render_records(steps, fmt))

