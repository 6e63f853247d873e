"""``balloonctl watch``: a stream of snapshots (and QMP events) for pipes."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
from collections.abc import Mapping
from typing import Annotated, Any

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


def _event_record(vm: str, name: str, data: Mapping[str, Any], ts: float) -> dict[str, Any]:
    from balloonctl.fleet import CONNECTED, DISCONNECTED

    label = {CONNECTED: "CONNECTED", DISCONNECTED: "DISCONNECTED"}.get(name, name)
    record: dict[str, Any] = {"event": label, "name": vm, "timestamp": round(ts, 6)}
    if name != CONNECTED:
        record["data"] = json.loads(json.dumps(dict(data), default=str))
    return record


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
            with contextlib.suppress(BalloonError):  # a VM's failure shows in its snapshots
                async for vm, ev in fleet.events():
                    out(json.dumps(_event_record(vm, ev.name, ev.data, ev.timestamp),
                                   separators=(",", ":")))

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
