"""History filtering and rows, and undo planning, over journal entries."""

from __future__ import annotations

from datetime import UTC, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from balloonctl.errors import UsageError
from balloonctl.history import history, history_row, local_time, plan_undo
from balloonctl.journal import Journal, JournalEntry, Origin
from balloonctl.text import escape_text
from balloonctl.units import GiB, MiB

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def change(previous: int | None, target: int, *, vm: str = "vm1", origin: str = "set",
           t: float = T0, qmp: str | None = None, **kw: Any) -> JournalEntry:
    return JournalEntry.new(vm=vm, qmp=qmp or f"/nonexistent/{vm}.qmp", previous=previous,
                            target=target, reason=kw.pop("reason", "r"), origin=origin,
                            now=t, pid=kw.pop("pid", 100), host=kw.pop("host", "hv1"), **kw)


class Fleet:
    """A journal in memory, with undo applied the way the CLI will: plan, set, append."""

    def __init__(self) -> None:
        self.entries: list[JournalEntry] = []
        self.t = T0

    def set(self, previous: int | None, target: int, **kw: Any) -> JournalEntry:
        self.t += 60
        entry = change(previous, target, t=self.t, **kw)
        self.entries.append(entry)
        return entry

    def undo(self, vm: str = "vm1", steps: int = 1) -> int | None:
        (step,) = plan_undo(self.entries, vm, steps)
        if step.target is not None:
            self.t += 60
            self.entries.append(step.entry(now=self.t, pid=200, host="hv1"))
        return step.target


# --- history ------------------------------------------------------------------------------


def test_history_filters_by_vm_and_since_inclusive() -> None:
    a = change(None, GiB, vm="a", t=T0)
    b = change(None, GiB, vm="b", t=T0 + 10)
    c = change(GiB, 2 * GiB, vm="a", t=T0 + 20)
    entries = [a, b, c]
    assert history(entries) == entries
    assert history(entries, "a") == [a, c]
    assert history(entries, ["a", "b"], since=T0 + 10) == [b, c]  # at since: kept
    assert history(entries, since=T0 + 10.001) == [c]  # a moment later: not
    assert history(entries, "zz") == []


def test_history_row() -> None:
    entry = change(2 * GiB, 1536 * MiB, t=T0, reason="host short", pid=42)
    row = history_row(entry, tz=UTC)
    assert row.cells() == ("2023-11-14T22:13:20+00:00", "vm1", "2 GiB -> 1.5 GiB",
                           "set (pid 42 on hv1)", "host short")


def test_history_row_unknown_previous_no_host_and_a_zone() -> None:
    entry = JournalEntry(id="x", time=T0, vm="vm1", qmp="/q", previous=None, target=GiB,
                         reason="", origin=Origin.FOREIGN, pid=7)
    row = history_row(entry, tz=timezone(timedelta(hours=2)))
    assert row.time == "2023-11-15T00:13:20+02:00"
    assert (row.change, row.origin) == ("? -> 1 GiB", "foreign (pid 7)")


def test_history_row_escapes_control_characters() -> None:
    entry = change(None, GiB, vm="vm\x1b[2J1", reason="line\nbreak\u202eevil",
                   host="h\x07")
    row = history_row(entry, tz=UTC)
    assert row.vm == "vm\\x1b[2J1"
    assert row.reason == "line\\nbreak\\u202eevil"
    assert row.origin == "set (pid 100 on h\\x07)"
    assert all(c.isprintable() for cell in row.cells() for c in cell)


def test_local_time_defaults_to_the_local_zone() -> None:
    text = local_time(T0)
    assert text.startswith("2023-11-1") and len(text) == len("2023-11-14T22:13:20+00:00")


@pytest.mark.parametrize(("text", "shown"), [
    ("plain name", "plain name"), ("tab\there", "tab\\there"), ("\x7f", "\\x7f"),
    ("nb\u00a0sp", "nb\u00a0sp"), ("é ü 漢", "é ü 漢"), ("\u2028", "\\u2028"),
    ("\U000e0001", "\\U000e0001"),
])
def test_escape_text(text: str, shown: str) -> None:
    assert escape_text(text) == shown


# --- undo ---------------------------------------------------------------------------------


def test_undo_restores_the_previous_target_of_the_last_change() -> None:
    fleet = Fleet()
    fleet.set(4 * GiB, 2 * GiB)
    last = fleet.set(2 * GiB, GiB)
    (step,) = plan_undo(fleet.entries, "vm1")
    assert (step.target, step.current, step.note) == (2 * GiB, GiB, None)
    assert step.undoes == (last,) and step.qmp == "/nonexistent/vm1.qmp"
    entry = step.entry(now=T0 + 1000, pid=9, host="hv1")
    assert (entry.origin, entry.previous, entry.target) == (Origin.UNDO, GiB, 2 * GiB)
    assert entry.undoes == (last.id,)
    assert entry.reason.startswith("undo 1 change: back to the target before set at ")


def test_undo_several_steps_restores_the_oldest_previous() -> None:
    fleet = Fleet()
    first = fleet.set(4 * GiB, 3 * GiB)
    second = fleet.set(3 * GiB, 2 * GiB)
    third = fleet.set(2 * GiB, GiB)
    (step,) = plan_undo(fleet.entries, "vm1", steps=3)
    assert step.target == 4 * GiB and step.undoes == (third, second, first)
    assert step.note is None
    assert step.entry().reason.startswith("undo 3 changes:")
    (step,) = plan_undo(fleet.entries, "vm1", steps=2)
    assert step.target == 3 * GiB


def test_undo_more_steps_than_there_are() -> None:
    fleet = Fleet()
    fleet.set(4 * GiB, 3 * GiB)
    fleet.set(3 * GiB, 2 * GiB)
    (step,) = plan_undo(fleet.entries, "vm1", steps=3)
    assert step.target == 4 * GiB and len(step.undoes) == 2
    assert step.note == "only 2 changes to undo"


def test_undoing_again_walks_further_back_never_redoes() -> None:
    fleet = Fleet()
    fleet.set(4 * GiB, 3 * GiB)
    fleet.set(3 * GiB, 2 * GiB)
    assert fleet.undo() == 3 * GiB
    assert fleet.undo() == 4 * GiB  # not back to 2 GiB: an undo is never itself undone
    assert fleet.undo() is None
    (step,) = plan_undo(fleet.entries, "vm1")
    assert (step.note, step.current) == ("nothing left to undo", 4 * GiB)
    with pytest.raises(UsageError, match="vm1: nothing left to undo"):
        step.entry()


def test_a_change_after_an_undo_is_undone_first() -> None:
    fleet = Fleet()
    fleet.set(4 * GiB, 3 * GiB)
    fleet.set(3 * GiB, 2 * GiB)
    assert fleet.undo() == 3 * GiB
    fleet.set(3 * GiB, 1536 * MiB)
    assert fleet.undo() == 3 * GiB
    assert fleet.undo() == 4 * GiB  # the 3 -> 2 change was already taken back
    assert fleet.undo() is None


def test_a_multi_step_undo_is_remembered_as_all_its_steps() -> None:
    fleet = Fleet()
    fleet.set(8 * GiB, 4 * GiB)
    fleet.set(4 * GiB, 3 * GiB)
    fleet.set(3 * GiB, 2 * GiB)
    assert fleet.undo(steps=2) == 4 * GiB
    assert fleet.undo() == 8 * GiB


def test_undo_stops_at_a_foreign_change_and_says_so() -> None:
    fleet = Fleet()
    fleet.set(4 * GiB, 3 * GiB)
    foreign = fleet.set(3 * GiB, 2 * GiB, origin="foreign")
    fleet.set(2 * GiB, GiB, origin="auto")
    (step,) = plan_undo(fleet.entries, "vm1", steps=1)
    assert (step.target, step.note) == (2 * GiB, None)
    (step,) = plan_undo(fleet.entries, "vm1", steps=2)
    assert step.target == 2 * GiB and len(step.undoes) == 1  # the auto change only
    assert step.stopped_at == foreign
    assert step.note is not None and "another writer" in step.note
    assert "3 GiB -> 2 GiB" in step.note and "use set" in step.note


def test_the_newest_change_being_foreign_leaves_nothing_to_undo() -> None:
    fleet = Fleet()
    fleet.set(4 * GiB, 3 * GiB)
    fleet.set(3 * GiB, GiB, origin="foreign")
    (step,) = plan_undo(fleet.entries, "vm1")
    assert (step.target, step.current) == (None, GiB)
    assert step.note is not None and step.note.startswith("stopped at a change by another")


def test_undo_stops_before_an_unknown_previous_target() -> None:
    fleet = Fleet()
    fleet.set(None, 3 * GiB)
    fleet.set(3 * GiB, 2 * GiB)
    (step,) = plan_undo(fleet.entries, "vm1", steps=2)
    assert step.target == 3 * GiB and len(step.undoes) == 1
    assert step.note is not None and "previous target is unknown" in step.note
    assert fleet.undo() == 3 * GiB
    assert fleet.undo() is None


def test_undo_stops_at_another_vm_of_the_same_name() -> None:
    fleet = Fleet()
    fleet.set(4 * GiB, 3 * GiB, qmp="/old/vm1.qmp")
    fleet.set(3 * GiB, 2 * GiB)
    (step,) = plan_undo(fleet.entries, "vm1", steps=2)
    assert step.target == 3 * GiB and "another VM run (/old/vm1.qmp)" in (step.note or "")


def test_undo_of_several_vms_each_walks_its_own_changes() -> None:
    fleet = Fleet()
    fleet.set(4 * GiB, 3 * GiB, vm="b")
    fleet.set(2 * GiB, GiB, vm="a")
    fleet.set(3 * GiB, 2 * GiB, vm="b")
    steps = plan_undo(fleet.entries)
    assert [(s.vm, s.target) for s in steps] == [("a", 2 * GiB), ("b", 3 * GiB)]
    steps = plan_undo(fleet.entries, ["b", "ghost", "a", "b"])
    assert [(s.vm, s.target) for s in steps] == [("b", 3 * GiB), ("ghost", None),
                                                 ("a", 2 * GiB)]
    assert steps[1].note == "no journaled changes"


@pytest.mark.parametrize("steps", [0, -1])
def test_undo_needs_at_least_one_step(steps: int) -> None:
    with pytest.raises(UsageError, match="steps must be at least 1"):
        plan_undo([], "vm1", steps)


@given(st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=12),
       st.integers(min_value=1, max_value=14))
def test_repeated_undo_retraces_the_targets_in_reverse(targets: list[int], undos: int) -> None:
    fleet = Fleet()
    standing = [100 * MiB]  # the target before the first change
    for t in targets:
        fleet.set(standing[-1], t * MiB)
        standing.append(t * MiB)
    for _ in range(undos):
        restored = fleet.undo()
        if len(standing) == 1:
            assert restored is None
        else:
            standing.pop()
            assert restored == standing[-1]


def test_undo_through_the_journal_file(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.jsonl")
    journal.append(change(4 * GiB, 3 * GiB, t=T0), change(3 * GiB, 2 * GiB, t=T0 + 1))
    (step,) = plan_undo(journal.read().entries, "vm1")
    journal.append(step.entry())
    (step,) = plan_undo(journal.read().entries, "vm1")
    assert (step.current, step.target) == (3 * GiB, 4 * GiB)
