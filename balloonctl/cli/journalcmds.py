"""``balloonctl history`` (the journal, filtered) and ``balloonctl undo`` (take back the last
changes, journaled too): thin commands over ``balloonctl.journal`` and ``balloonctl.history``."""

from __future__ import annotations

import fnmatch
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from balloonctl.cli import completers
from balloonctl.cli.common import (
    FormatOpt,
    JsonOpt,
    duration,
    exit_with,
    out,
    out_lines,
    output_format,
    report_error,
    run,
    settings,
)
from balloonctl.cli.exitcodes import ExitCode, combine, exit_code_for
from balloonctl.cli.journaling import journal
from balloonctl.cli.output import Format, error, note, render_records
from balloonctl.errors import BalloonError, JournalError, UsageError
from balloonctl.journal import JournalEntry, JournalRead, qmp_address

if TYPE_CHECKING:
    from balloonctl.backend import VmClient
    from balloonctl.history import UndoStep

__all__ = ["history", "undo"]

JournalVmsArg = Annotated[list[str] | None, typer.Argument(
    metavar="VM", help="VM names or globs, as the journal names them (default: every VM).",
    autocompletion=completers.typer_callback("vms"), show_default=False,
)]


def _read() -> JournalRead:
    """The journal, each warning (a torn last line, a bad line) as one stderr line."""
    read = journal().read()
    for warning in read.warnings:
        note(f"warning: {warning}")
    return read


def _vms(entries: tuple[JournalEntry, ...], patterns: list[str] | None) -> list[str] | None:
    """The journaled VM names matching ``patterns``, in order of first appearance."""
    if not patterns:
        return None
    names = dict.fromkeys(e.vm for e in entries)
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def history(
    vms: JournalVmsArg = None,
    since: Annotated[str | None, typer.Option(
        "--since", metavar="DURATION", help="Only changes of the last DURATION (e.g. 1h).",
    )] = None,
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The journal of target changes: set, wave, auto, dashboard, undo, and moves by
    other writers (foreign)."""
    from balloonctl.history import HISTORY_COLUMNS, history, history_row

    fmt = output_format(fmt, as_json)
    ago = duration(since, "--since")
    read = _read()
    chosen = _vms(read.entries, vms)
    entries = history(read.entries, vm=chosen,
                      since=None if ago is None else time.time() - ago)
    rows = [history_row(e).cells() for e in entries]
    records: list[dict[str, Any]] = (
        [dict(zip(HISTORY_COLUMNS, r, strict=True)) for r in rows] if fmt is Format.CSV
        else [e.to_json() for e in entries])
    out(render_records(records, fmt, keys=list(HISTORY_COLUMNS),
                        headers=[c.upper() for c in HISTORY_COLUMNS], rows=rows))


def _moved_since(step: UndoStep, target: int | None, actual: int | None, foreign: bool) -> bool:
    """Whether the VM is no longer where the journal's newest entry left it."""
    from balloonctl.targets import FOREIGN_MARGIN

    if foreign or step.current is None:
        return foreign
    if target is not None:
        return target != step.current
    return actual is None or abs(actual - step.current) > FOREIGN_MARGIN


def undo(
    vms: JournalVmsArg = None,
    steps: Annotated[int, typer.Option(
        "--steps", "-s", min=1, metavar="N", help="How many changes of each VM to take back.",
    )] = 1,
) -> None:
    """Set the targets back to where they were before the last N journaled changes of each
    VM, and journal that. Stops before a change by another writer (use set)."""
    from balloonctl.changes import foreign_entry
    from balloonctl.history import plan_undo
    from balloonctl.model import Owner

    where = journal()
    read = _read()
    chosen = _vms(read.entries, vms)
    if chosen == []:
        raise UsageError(f"no journaled changes of {', '.join(vms or [])}")
    plans = plan_undo(read.entries, vm=chosen, steps=steps)
    if not plans:
        raise UsageError("the journal has no changes to undo")
    codes: list[ExitCode] = []
    todo: dict[str, UndoStep] = {}
    inventory = settings().inventory()
    for step in plans:
        if step.target is None:
            error(f"{step.vm}: nothing to undo: {step.note}")
            codes.append(ExitCode.USAGE)
            continue
        try:
            ref = inventory.get(step.vm)
        except BalloonError as exc:
            report_error(exc)
            codes.append(exit_code_for(exc))
            continue
        if qmp_address(ref.qmp) != step.qmp:
            error(f"{step.vm}: its changes were made at {step.qmp}, it is now at "
                  f"{qmp_address(ref.qmp)}: not undone")
            codes.append(ExitCode.USAGE)
            continue
        todo[step.vm] = step
    if not todo:
        exit_with(combine(codes))
        return
    where.check_writable()  # refuse before anything is sent
    fleet = settings().fleet([inventory.get(n) for n in todo])

    async def one(c: VmClient) -> tuple[str, JournalEntry]:
        step = todo[c.name]
        state = await c.snapshot()
        if not state.reachable:
            raise BalloonError(state.error or "unreachable", vm=c.name)
        foreign = state.owner is Owner.FOREIGN
        if _moved_since(step, state.target, state.actual, foreign):
            mark = await c.targets.claim_foreign_report() if foreign else None
            fallback = {"previous": step.current, "why": "not where the journal left it"}
            assert state.actual is not None
            return "foreign", foreign_entry(c.name, c.address, mark or fallback, state.actual)
        await c.set_target(step.target or 0, record=False)
        return "undo", step.entry()

    async def go() -> dict[str, tuple[str, JournalEntry] | BalloonError]:
        try:
            return await fleet.run_each(list(todo), one)
        finally:
            await fleet.close()

    results = run(go())
    entries = [r[1] for r in results.values() if not isinstance(r, BalloonError)]
    try:
        where.append(*entries)
    except JournalError as exc:
        undone = [r[1] for r in results.values() if not isinstance(r, BalloonError)
                  and r[0] == "undo"]
        if undone:
            from balloonctl.changes import unrecorded

            exc = unrecorded(exc, "targets set back (" + ", ".join(e.vm for e in undone) + ")")
        raise exc from None
    for name, result in results.items():
        if isinstance(result, BalloonError):
            report_error(result.with_vm(name))
            codes.append(exit_code_for(result))
            continue
        kind, entry = result
        if kind == "foreign":
            error(f"{name}: moved by another writer since the journal's last change "
                  "(journaled as foreign); not undone: use set to take it back")
            codes.append(ExitCode.FAILURE)
            continue
        from balloonctl.units import format_size

        before = "?" if entry.previous is None else format_size(entry.previous)
        out_lines([f"{name}: {before} -> {format_size(entry.target)}: {entry.reason}"])
        codes.append(ExitCode.OK)
    exit_with(combine(codes))
