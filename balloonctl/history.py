"""What the journal says: ``history`` filtering and rows, and ``undo`` planning.

Pure functions over ``JournalEntry`` values (no I/O, no clock): the CLI reads the journal
(``balloonctl.journal``), calls these, sets targets and appends what it did.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo

from balloonctl.errors import UsageError
from balloonctl.journal import JournalEntry, Origin
from balloonctl.text import escape_text
from balloonctl.units import format_size

__all__ = [
    "HISTORY_COLUMNS",
    "HistoryRow",
    "UndoStep",
    "history",
    "history_row",
    "local_time",
    "plan_undo",
]




def _selected(vm: str | Collection[str] | None) -> Collection[str] | None:
    return {vm} if isinstance(vm, str) else vm


def history(entries: Iterable[JournalEntry], vm: str | Collection[str] | None = None,
            since: float | None = None) -> list[JournalEntry]:
    """The entries of ``vm`` (a name or names; None: all) at or after ``since`` (unix time),
    in journal order."""
    names = _selected(vm)
    return [e for e in entries
            if (names is None or e.vm in names) and (since is None or e.time >= since)]


HISTORY_COLUMNS: tuple[str, ...] = ("time", "vm", "change", "origin", "reason")


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One ``history`` row as text, safe for a terminal (control characters escaped)."""

    time: str
    vm: str
    change: str
    origin: str
    reason: str

    def cells(self) -> tuple[str, ...]:
        return (self.time, self.vm, self.change, self.origin, self.reason)


def local_time(stamp: float, tz: tzinfo | None = None) -> str:
    """ISO 8601 to the second, in ``tz`` (default: the local zone), with its offset."""
    return datetime.fromtimestamp(stamp).astimezone(tz).isoformat(timespec="seconds")


def history_row(entry: JournalEntry, *, tz: tzinfo | None = None) -> HistoryRow:
    """Render an entry for ``history``: ``previous -> target`` in binary units (``?`` when
    the previous target was unknown), origin as ``command (pid N[ on HOST])``."""
    where = f" on {entry.host}" if entry.host else ""
    return HistoryRow(
        time=local_time(entry.time, tz),
        vm=escape_text(entry.vm),
        change=_sizes(entry),
        origin=escape_text(f"{entry.origin.value} (pid {entry.pid}{where})"),
        reason=escape_text(entry.reason),
    )


# --- undo ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UndoStep:
    """What ``undo`` will do to one VM.

    ``target`` is the target to restore (None: nothing can be undone, ``note`` says why);
    ``current`` the target the journal says stands now (its newest entry's), which the CLI
    compares with the VM's before it sets anything; ``undoes`` the changes taken back,
    newest first; ``note`` why fewer than ``requested`` changes are undone, and
    ``stopped_at`` the entry undo would not cross.
    """

    vm: str
    qmp: str
    requested: int
    current: int | None
    target: int | None
    undoes: tuple[JournalEntry, ...] = ()
    note: str | None = None
    stopped_at: JournalEntry | None = None

    def entry(self, *, now: float | None = None, pid: int | None = None,
              host: str | None = None) -> JournalEntry:
        """The ``undo`` entry to append once ``target`` is set.

        Raises:
            UsageError: there is nothing to undo.
        """
        if self.target is None or not self.undoes:
            raise UsageError(self.note or "nothing to undo", vm=self.vm)
        oldest = self.undoes[-1]
        count = len(self.undoes)
        reason = (f"undo {count} change{'s' if count > 1 else ''}: back to the target before "
                  f"{oldest.origin.value} at {local_time(oldest.time)}")
        return JournalEntry.new(vm=self.vm, qmp=self.qmp, previous=self.current,
                                target=self.target, reason=reason, origin=Origin.UNDO,
                                undoes=[e.id for e in self.undoes], now=now, pid=pid,
                                host=host)


def plan_undo(entries: Sequence[JournalEntry], vm: str | Collection[str] | None = None,
              steps: int = 1) -> list[UndoStep]:
    """Plan taking back the last ``steps`` balloonctl changes of each selected VM (``vm``: a
    name or names, in that order; None: every VM in the journal, by name). Pure.

    The rule, walking a VM's entries from the newest back, in journal order:

    - an ``undo`` entry is never itself undone: the ids it lists are marked taken back, so
      the next ``undo`` continues further into the past (there is no redo; use ``set``);
    - a change already taken back by an undo is skipped;
    - any other change counts as one step; the target to restore is the ``previous`` of the
      oldest change counted;
    - undo stops, and says so in ``note``, before a ``foreign`` entry (someone else moved
      the balloon: undo will not silently override them), before a change whose previous
      target was unknown, and before a change made at a different QMP address (another VM
      of the same name). The steps counted until then are still planned.

    Raises:
        UsageError: ``steps`` is below 1.
    """
    if steps < 1:
        raise UsageError(f"steps must be at least 1, not {steps}")
    by_vm: dict[str, list[JournalEntry]] = {}
    for entry in entries:
        by_vm.setdefault(entry.vm, []).append(entry)
    names = sorted(by_vm) if vm is None else list(dict.fromkeys(_ordered(vm)))
    return [_plan_one(name, by_vm.get(name, []), steps) for name in names]


def _ordered(vm: str | Collection[str]) -> Iterable[str]:
    return [vm] if isinstance(vm, str) else vm


def _plan_one(name: str, entries: list[JournalEntry], steps: int) -> UndoStep:
    if not entries:
        return UndoStep(name, "", steps, None, None, note="no journaled changes")
    newest = entries[-1]
    taken_back: set[str] = set()
    undoes: list[JournalEntry] = []
    note: str | None = None
    stopped_at: JournalEntry | None = None
    for entry in reversed(entries):
        if len(undoes) == steps:
            break
        if entry.origin is Origin.UNDO:
            taken_back.update(entry.undoes)
            continue
        if entry.id in taken_back:
            continue
        when = local_time(entry.time)
        if entry.origin is Origin.FOREIGN:
            note = (f"stopped at a change by another writer at {when} "
                    f"({_sizes(entry)}); undo does not override it, use set")
        elif entry.qmp != newest.qmp:
            note = (f"stopped at a change at {when} to another VM run "
                    f"({escape_text(entry.qmp)})")
        elif entry.previous is None:
            note = (f"stopped at the change at {when} ({entry.origin.value}): "
                    "its previous target is unknown")
        else:
            undoes.append(entry)
            continue
        stopped_at = entry
        break
    else:
        if len(undoes) < steps:
            have = len(undoes)
            note = ("nothing left to undo" if have == 0 else
                    f"only {have} change{'s' if have > 1 else ''} to undo")
    target = undoes[-1].previous if undoes else None
    return UndoStep(name, newest.qmp, steps, newest.target, target, tuple(undoes), note,
                    stopped_at)


def _sizes(entry: JournalEntry) -> str:
    before = "?" if entry.previous is None else format_size(entry.previous)
    return f"{before} -> {format_size(entry.target)}"

