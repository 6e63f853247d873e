"""``balloonctl status``: a table (or JSON, NDJSON, CSV) of every selected VM's balloon."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
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
from balloonctl.errors import UsageError
from balloonctl.model import BalloonState
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
    host: Annotated[bool, typer.Option(
        "--host-memory", help="Show the host's memory: a first line in tables (the default "
                              "on a terminal); with --json an object {host, vms}.",
    )] = False,
) -> None:
    """A table of every selected VM's balloon: actual, RAM, target, free, cached, hint."""
    from balloonctl.cli.hostline import with_host

    fmt = output_format(fmt, as_json)
    every = duration(interval, "--interval") or 2.0
    services = settings().services()
    refs = [] if services is not None else settings().select(vms or [], all_vms=all_vms)
    remote = services is not None and any(ep.uds is None for ep in services)
    if host and remote:  # the host line is this machine's memory, not a remote service's
        raise UsageError("status --host-memory shows this machine's memory; a remote "
                         "service's is "
                         "GET /v1/host, or the host lines of dashboard --host URL")
    host = host or (is_tty() and fmt is Format.TABLE and not remote)

    async def read() -> list[BalloonState]:
        if services is None:
            return await snapshot(refs)
        from balloonctl.cli.remote import remote_states

        return await remote_states(services, vms or [], all_vms)

    if not watch:
        states = run(read())
        out(with_host(render_states(states, fmt), states, fmt, host))
        exit_with(report_states(states, refs))
        return

    async def through_service() -> AsyncIterator[list[BalloonState]]:
        while True:
            yield await read()
            await asyncio.sleep(every)

    async def loop() -> None:
        fleet = settings().fleet(refs)
        tty = is_tty() and fmt is Format.TABLE
        n = 0
        try:
            stream = fleet.stream(every) if services is None else through_service()
            async for states in stream:
                text = with_host(render_states(states, fmt, csv_header=n == 0), states, fmt,
                                 host)
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

