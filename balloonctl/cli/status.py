"""``balloonctl status``: a table (or JSON, NDJSON, CSV) of every selected VM's balloon."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from balloonctl.cli.common import (
    AllOpt,
    FormatOpt,
    JsonOpt,
    VmsArg,
    duration,
    exit_with,
    is_tty,
    out,
    output_format,
    report_states,
    run,
    settings,
    snapshot,
    watching_stdout,
)
from balloonctl.cli.output import Format, render_states
from balloonctl.units import format_duration

__all__ = ["status"]


def status(
    vms: VmsArg = None,
    all_vms: AllOpt = False,
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh in place.")] = False,
    interval: Annotated[str, typer.Option(
        "--interval", "-n", metavar="DURATION", help="Refresh interval with --watch.",
    )] = "2s",
    count: Annotated[int | None, typer.Option(
        "--count", metavar="N", help="With --watch, stop after N refreshes.",
    )] = None,
) -> None:
    """A table of every selected VM's balloon: actual, RAM, target, free, cached, hint."""
    fmt = output_format(fmt, as_json)
    every = duration(interval, "--interval") or 2.0
    refs = settings().select(vms or [], all_vms=all_vms)
    if not watch:
        states = run(snapshot(refs))
        out(render_states(states, fmt))
        exit_with(report_states(states, refs))
        return

    async def loop() -> None:
        fleet = settings().fleet(refs)
        tty = is_tty() and fmt is Format.TABLE
        n = 0
        try:
            async for states in fleet.stream(every):
                text = render_states(states, fmt, csv_header=n == 0)
                if tty:
                    stamp = time.strftime("%H:%M:%S")
                    text = f"\x1b[H\x1b[2J{stamp}  every {format_duration(every)}\n{text}"
                elif fmt is Format.TABLE and n:
                    text = "\n" + text
                out(text)
                n += 1
                if count is not None and n >= count:
                    return
        finally:
            await fleet.close()

    try:
        run(watching_stdout(loop()))
    except KeyboardInterrupt:
        pass

