"""``balloonctl plan`` (the policy's decisions, applied to nothing) and ``balloonctl auto``
(the policy applied every cycle, journaled): thin commands over ``balloonctl.auto``."""

from __future__ import annotations

import asyncio
import enum
import json
import signal
import threading
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from balloonctl.cli import completers
from balloonctl.cli.common import (
    AllOpt,
    FormatOpt,
    JsonOpt,
    VmsArg,
    duration,
    exit_with,
    out,
    out_lines,
    output_format,
    report,
    report_error,
    report_states,
    run,
    settings,
)
from balloonctl.cli.exitcodes import ExitCode
from balloonctl.cli.output import Format, error, note, render_records, size
from balloonctl.errors import JournalError, UsageError
from balloonctl.host import describe_host

if TYPE_CHECKING:
    from balloonctl.auto import AutoController, Cycle
    from balloonctl.policy import Decision

__all__ = ["auto", "plan"]

PLAN_HEADERS = ("NAME", "ACTION", "ACTUAL", "TARGET", "REASON")
PLAN_KEYS = ("name", "action", "current", "target", "reason")


def _plan_row(d: Decision) -> list[str]:
    return [d.name, d.action.value, size(d.current), size(d.target), d.reason]


def _reclaim_line(name: str, reclaimed: bool) -> str:
    return f"{name}: taken back from another writer" if reclaimed else \
        f"{name}: was not marked as moved by another writer"


def _reclaim_through_service(names: list[str]) -> bool:
    """``auto --reclaim`` while ``balloonctl serve`` holds the sockets (``cli.remote``): the
    service takes the VMs back and its auto manages them; no second auto is started.
    False when the CLI talks QMP itself."""
    services = settings().services()
    if services is None:
        return False
    from balloonctl.cli.remote_cmds import reclaim_through_service

    results = run(reclaim_through_service(services, names))
    done = [_reclaim_line(n, r) for n, r in results.items() if isinstance(r, bool)]
    out_lines(done)
    if done:
        note("auto: balloonctl serve runs auto for these VMs; no second auto started here")
    exit_with(report(results, []))
    return True


def _controller(names: list[str], *, dry_run: bool, hold: bool = False) -> AutoController:
    from balloonctl.auto import AutoController
    from balloonctl.cli.journaling import journal

    s = settings()
    inventory = s.inventory()
    refs = [inventory.get(n) for n in names]
    return AutoController(s.fleet(refs, hold=hold), settings=inventory.config.policy,
                          host_root=inventory.host_root,
                          journal=None if dry_run else journal(), dry_run=dry_run)


def plan(
    vms: VmsArg = None,
    all_vms: AllOpt = False,
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The automatic-ballooning policy's decision for each VM now, with its reason;
    nothing is sent. Swap-in and fault rates need two cycles: see `auto --dry-run`."""
    fmt = output_format(fmt, as_json)
    refs = settings().select(vms or [], all_vms=all_vms)
    controller = _controller([r.name for r in refs], dry_run=True)

    async def once() -> Cycle:
        try:
            return await controller.cycle()
        finally:
            await controller.fleet.close()

    cycle = run(once())
    if cycle.host_error is not None:
        raise cycle.host_error
    records = [d.to_json() for d in cycle.decisions]
    text = render_records(records, fmt, keys=PLAN_KEYS, headers=PLAN_HEADERS,
                          rows=[_plan_row(d) for d in cycle.decisions])
    if fmt is Format.TABLE and cycle.host is not None:
        total = sum(s.guest_ram or 0 for s in cycle.states)
        text = f"{describe_host(cycle.host, total)}\n{text}"
    out(text)
    exit_with(report_states(cycle.states, refs))


class AutoFormat(enum.StrEnum):
    TABLE = "table"
    NDJSON = "ndjson"


def _change_record(cycle: Cycle, name: str, action: str, previous: int | None,
                   target: int | None, reason: str, *, applied: bool) -> dict[str, Any]:
    return {"time": round(time.time(), 3), "cycle": cycle.number, "name": name,
            "action": action, "previous": previous, "target": target, "reason": reason,
            "applied": applied}


def _emitter(fmt: AutoFormat) -> Any:
    def line(record: dict[str, Any], text: str) -> None:
        if fmt is AutoFormat.NDJSON:
            out(json.dumps(record, separators=(",", ":")))
        else:
            out_lines([f"{time.strftime('%H:%M:%S')}  {text}"])

    def emit(cycle: Cycle) -> None:
        if cycle.host_error is not None:
            error(f"cycle {cycle.number}: {cycle.host_error}; nothing decided")
        for change in cycle.applied:
            line(_change_record(cycle, change.name, change.action.value, change.previous,
                                change.target, change.reason, applied=True), change.line())
        if cycle.dry_run:
            for d in cycle.planned:
                line(_change_record(cycle, d.name, d.action.value, d.current, d.target,
                                    d.reason, applied=False),
                     f"{d.name}: would set {size(d.current)} -> {size(d.target)} "
                     f"({d.action.value}): {d.reason}")
        for move in cycle.foreign:
            line(_change_record(cycle, move.name, "foreign", move.previous, move.actual,
                                move.why, applied=False), move.line())
        for name, exc in cycle.failed.items():
            report_error(exc.with_vm(name))
        if cycle.stats_enabled:
            note(f"auto: turned on guest stats polling on {', '.join(cycle.stats_enabled)}")

    return emit


def auto(
    vms: VmsArg = None,
    all_vms: AllOpt = False,
    cycles: Annotated[int | None, typer.Option(
        "--cycles", "-c", min=1, metavar="N", help="Stop after N cycles.",
    )] = None,
    run_for: Annotated[str | None, typer.Option(
        "--duration", metavar="DURATION", help="Stop after this long (e.g. 10m).",
    )] = None,
    interval: Annotated[str | None, typer.Option(
        "--interval", "-n", metavar="DURATION",
        help="Time between cycles (default: the config's policy.cycle, 10s).",
    )] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the planned changes every cycle; send nothing.",
    )] = False,
    reclaim: Annotated[list[str] | None, typer.Option(
        "--reclaim", metavar="VM", show_default=False,
        help="Take this VM back from another writer first (repeatable).",
        autocompletion=completers.typer_callback("reclaim"),
    )] = None,
    fmt: Annotated[AutoFormat, typer.Option(
        "--format", "-f", case_sensitive=False, help="table (one line per change) or ndjson.",
    )] = AutoFormat.TABLE,
    hold: Annotated[bool, typer.Option(
        "--hold/--polite",
        help="Keep every VM's QMP socket open for the run (cheaper; other QMP clients are "
             "then refused: use balloonctl serve to share) or reconnect for every cycle.",
    )] = False,
) -> None:
    """Apply the automatic-ballooning policy every cycle, one line per change, until
    Ctrl-C or SIGTERM (targets then stay where they are). Every change is journaled; a
    VM moved by another writer is left alone until --reclaim."""
    if reclaim and _reclaim_through_service(reclaim):
        return
    s = settings()
    refs = s.select(vms or [], all_vms=all_vms)
    names = [r.name for r in refs]
    every = duration(interval, "--interval")
    limit = duration(run_for, "--duration")
    taken_back = s.select(reclaim, all_vms=False) if reclaim else []
    outside = [r.name for r in taken_back if r.name not in names]
    if outside:
        raise UsageError(f"--reclaim {outside[0]}: not among the VMs auto manages")
    controller = _controller(names, dry_run=dry_run, hold=hold)
    if controller.journal is not None:
        controller.journal.check_writable()  # refuse before anything is sent
    where = "nothing is sent (dry run)" if dry_run else f"journal {controller.journal.path}" \
        if controller.journal else ""
    note(f"auto: {len(names)} VMs every {every or controller.settings.cycle:g}s; {where}; "
         "Ctrl-C stops (targets stay where they are)")
    got: list[signal.Signals] = []

    async def go() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        handled: list[signal.Signals] = []

        def stopping(sig: signal.Signals) -> None:
            got.append(sig)
            stop.set()  # the cycle under way ends (and journals) first: nothing is cut off

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stopping, sig)
                handled.append(sig)
        try:
            if taken_back:
                done = await controller.reclaim([r.name for r in taken_back])
                for name, result in done.items():
                    if isinstance(result, bool):
                        out_lines([_reclaim_line(name, result)])
                    else:
                        report_error(result.with_vm(name))
            return await controller.run(_emitter(fmt), cycles=cycles, duration=limit,
                                        interval=every, stop=stop)
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)
            await controller.fleet.close()

    try:
        ran = run(go())
    except JournalError as exc:
        report_error(exc)
        note("auto stopped: it does not run with an unwritable journal")
        raise typer.Exit(int(ExitCode.JOURNAL)) from None
    how = {signal.SIGINT: " (Ctrl-C)", signal.SIGTERM: " (SIGTERM)"}.get(got[0], "") \
        if got else ""
    note(f"auto stopped{how} after {ran} cycle{'s' if ran != 1 else ''}; balloon targets "
         "stay where they are")
    if got:
        code = ExitCode.TERMINATED if got[0] == signal.SIGTERM else ExitCode.INTERRUPTED
        raise typer.Exit(int(code))
