"""``balloonctl watch``: a stream of snapshots (and QMP events) for pipes."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
from typing import Annotated

import typer

from balloonctl.cli.common import (
    AllOpt,
    VmsArg,
    duration,
    out,
    run,
    settings,
    watching_stdout,
)
from balloonctl.cli.output import Format, render_states
from balloonctl.errors import BalloonError

__all__ = ["WatchFormat", "watch"]


class WatchFormat(enum.StrEnum):
    NDJSON = "ndjson"
    CSV = "csv"


def watch(
    vms: VmsArg = None,
    all_vms: AllOpt = False,
    fmt: Annotated[WatchFormat, typer.Option(
        "--format", "-f", case_sensitive=False, help="ndjson (with events) or csv.",
    )] = WatchFormat.NDJSON,
    interval: Annotated[str, typer.Option(
        "--interval", "-n", metavar="DURATION", help="Time between snapshots.",
    )] = "2s",
    count: Annotated[int | None, typer.Option(
        "--count", metavar="N", help="Stop after N rounds of snapshots.",
    )] = None,
    events: Annotated[bool, typer.Option(
        "--events/--no-events",
        help="Hold the QMP sockets open and print BALLOON_CHANGE and other QMP events "
             "(ndjson only). --no-events polls politely, leaving the sockets free between polls.",
    )] = True,
) -> None:
    """A stream of snapshots, one line per VM, for piping (NDJSON or CSV)."""
    every = duration(interval, "--interval") or 2.0
    refs = settings().select(vms or [], all_vms=all_vms)
    as_csv = fmt is WatchFormat.CSV
    hold = events and not as_csv

    async def loop() -> None:
        fleet = settings().fleet(refs, hold=hold)

        async def pump_events() -> None:
            from balloonctl.fleet import event_record

            with contextlib.suppress(BalloonError):  # a VM's failure shows in its snapshots
                async for vm, ev in fleet.events():
                    out(json.dumps(event_record(vm, ev), separators=(",", ":")))

        async def snapshots() -> None:
            n = 0
            async for states in fleet.stream(every):
                out(render_states(states, Format.CSV if as_csv else Format.NDJSON,
                                  csv_header=n == 0))
                n += 1
                if count is not None and n >= count:
                    return

        main = asyncio.create_task(snapshots())
        tasks = {main, *([asyncio.create_task(pump_events())] if hold else [])}
        try:
            # either one failing (the reader of stdout gone) ends the watch, not just itself
            while not main.done():
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                tasks -= done
                for task in done:
                    task.result()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await fleet.close()

    try:
        run(watching_stdout(loop()))
    except KeyboardInterrupt:
        pass
