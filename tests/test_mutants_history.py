"""History filtering and undo planning at their edges: the cases `./dev mutate` found
untested.

Oracles: docs/journal.md ("Undo", the reason ``undo 2 changes: ...``) and the docstrings of
``history``, ``plan_undo`` and ``UndoStep``.
"""

from __future__ import annotations

import pytest

from balloonctl.errors import UsageError
from balloonctl.history import UndoStep, history, local_time, plan_undo
from balloonctl.journal import JournalEntry, Origin
from balloonctl.units import GiB

T0 = 1_700_000_000.0


def change(previous: int | None, target: int, *, vm: str = "vm1", origin: Origin = Origin.SET,
           t: float = T0) -> JournalEntry:
    return JournalEntry.new(vm=vm, qmp=f"/nonexistent/{vm}.qmp", previous=previous,
                            target=target, reason="r", origin=origin, now=t, pid=100,
                            host="hv1")


def test_a_vm_name_is_a_name_not_a_set_of_letters() -> None:
    short, long = change(None, GiB, vm="vm1"), change(None, GiB, vm="vm10")
    assert history([short, long], vm="vm10") == [long]
    assert history([short, long], vm="vm1") == [short]


# --- the undo entry ----------------------------------------------------------------------------


def test_an_undo_entry_carries_the_time_pid_and_host_it_is_given() -> None:
    a, b = change(GiB, 2 * GiB, t=T0), change(2 * GiB, 3 * GiB, t=T0 + 60)
    (step,) = plan_undo([a, b], "vm1", steps=2)
    made = step.entry(now=T0 + 120, pid=777, host="hv9")
    assert (made.time, made.pid, made.host) == (T0 + 120, 777, "hv9")
    assert made.origin is Origin.UNDO and made.undoes == (b.id, a.id)
    assert (made.previous, made.target) == (3 * GiB, GiB)
    assert made.reason == f"undo 2 changes: back to the target before set at {local_time(T0)}"


def test_an_undo_of_one_change_says_change() -> None:
    (step,) = plan_undo([change(GiB, 2 * GiB)], "vm1")
    assert step.entry(now=T0 + 1, pid=1, host="h").reason.startswith("undo 1 change: back")


def test_a_step_with_nothing_to_undo_refuses_to_make_an_entry() -> None:
    for step in (UndoStep("vm1", "/q", 1, GiB, None),
                 UndoStep("vm1", "/q", 1, GiB, 2 * GiB, undoes=())):
        with pytest.raises(UsageError) as info:
            step.entry()
        assert str(info.value) == "vm1: nothing to undo"


# --- planning ----------------------------------------------------------------------------------


def test_a_vm_without_changes_has_no_address_and_keeps_what_was_asked() -> None:
    (step,) = plan_undo([change(None, GiB, vm="other")], "vm1", steps=3)
    assert (step.vm, step.qmp, step.requested, step.current, step.target) == \
        ("vm1", "", 3, None, None)
    assert step.note == "no journaled changes" and step.stopped_at is None


def test_running_out_of_changes_says_how_many_there_were() -> None:
    one = [change(GiB, 2 * GiB)]
    two = [*one, change(2 * GiB, 3 * GiB, t=T0 + 60)]
    (step,) = plan_undo(one, "vm1", steps=3)
    assert (step.requested, step.note, step.stopped_at) == (3, "only 1 change to undo", None)
    (step,) = plan_undo(two, "vm1", steps=3)
    assert (step.note, step.target) == ("only 2 changes to undo", GiB)
    (step,) = plan_undo(two, "vm1", steps=2)
    assert (step.note, step.stopped_at, step.requested) == (None, None, 2)


def test_stop_notes_say_when_the_change_was_made() -> None:
    t = T0 + 3600
    foreign = [change(GiB, 2 * GiB, origin=Origin.FOREIGN, t=t)]
    (step,) = plan_undo(foreign, "vm1")
    assert step.note is not None and step.note.startswith(
        f"stopped at a change by another writer at {local_time(t)} ")
    unknown = [change(None, 2 * GiB, t=t)]
    (step,) = plan_undo(unknown, "vm1")
    assert step.note == (f"stopped at the change at {local_time(t)} (set): "
                         "its previous target is unknown")
    assert step.stopped_at == unknown[0]
