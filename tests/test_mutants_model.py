"""balloonctl.model at the edges `./dev mutate` found untested: ``HOST/VM`` names, refusals
whose sizes round alike, what two snapshots tell (``derive``: ``moved_at`` and the rates)
and the snapshot JSON's ``owner``, ``moved_at`` and rates.

Oracles: the docstrings of ``split_host_name``, ``validate_target``/``_apart``, ``derive``
and ``GuestStats`` ("0 means the guest driver never reported"), and docs/cli.md's snapshot
keys (``owner``, ``moved_at``, ``time``, ``swap_rate``, ``major_fault_rate``).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from balloonctl.errors import UnsafeTarget
from balloonctl.model import (
    BalloonState,
    GuestStats,
    Owner,
    VmStatus,
    derive,
    split_host_name,
    validate_target,
)
from balloonctl.units import GiB, MiB

T0 = 1_700_000_000


def snap(*, at: float = T0 + 1, actual: int | None = GiB, stats: GuestStats | None = None,
         **changes: Any) -> BalloonState:
    return BalloonState(name="vm1", qmp="/run/vm1.qmp", reachable=True, actual=actual,
                        guest_ram=2 * GiB, polling_interval=2, taken_at=at,
                        stats=GuestStats(last_update=T0) if stats is None else stats,
                        **changes)


def sample(last: int, **counters: int | None) -> GuestStats:
    full: dict[str, int | None] = {"swap_in": 0, "swap_out": 0, "major_faults": 0}
    full.update(counters)
    return GuestStats(last_update=last, free_memory=GiB, **full)


# --- HOST/VM names ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "split"), [
    ("hv1/vm1", ("hv1", "vm1")),
    ("vm1", (None, "vm1")),
    ("10.0.0.7:8080/vm1", ("10.0.0.7:8080", "vm1")),  # a label may be host:port
    # A host label (a host name or host:port) never holds "/": the host ends at the first
    # one, and the rest is the VM's name as its service sent it, however odd.
    ("hv1/odd/name", ("hv1", "odd/name")),
])
def test_a_name_splits_into_its_host_and_vm(name: str, split: tuple[str | None, str]) -> None:
    assert split_host_name(name) == split


# --- refusals whose two sizes would read alike --------------------------------------------


def test_a_limit_that_cannot_be_shown_exactly_is_refused_in_bytes() -> None:
    # 2 GiB against a maximum one byte lower: both round to "2 GiB", and the maximum has no
    # exact short form, so the refusal says them in bytes, never "~2 GiB".
    with pytest.raises(UnsafeTarget) as err:
        validate_target(2 * GiB, guest_ram=4 * GiB, maximum=2 * GiB - 1)
    text = str(err.value)
    assert "~" not in text and "2147483647 bytes" in text
    assert "maximum" in text


# --- derive: moved_at ----------------------------------------------------------------------


def test_a_change_of_actual_between_two_snapshots_is_a_move_at_the_later_one() -> None:
    got = derive(snap(actual=GiB), snap(at=T0 + 5, actual=GiB + 64 * MiB))
    assert got.moved_at == T0 + 5


def test_the_last_move_is_carried_over_while_actual_stands() -> None:
    before = snap(actual=GiB, moved_at=T0 - 100.0)
    assert derive(before, snap(at=T0 + 5, actual=GiB)).moved_at == T0 - 100.0


@pytest.mark.parametrize(("old", "new"), [
    (GiB, GiB),  # the same actual: no move
    (None, GiB),  # actual was unknown: a first reading is no move seen
    (GiB, None),  # actual is unknown now: no move seen either
])
def test_no_move_is_seen_without_two_different_actuals(old: int | None,
                                                       new: int | None) -> None:
    assert derive(snap(actual=old), snap(at=T0 + 5, actual=new)).moved_at is None


# --- derive: rates -------------------------------------------------------------------------


@pytest.mark.parametrize(("side", "counter"), [
    ("old", "swap_in"), ("old", "swap_out"), ("new", "swap_in"), ("new", "swap_out"),
])
def test_a_swap_counter_the_guest_did_not_send_leaves_the_swap_rate_unknown(
    side: str, counter: str,
) -> None:
    counters: dict[str, dict[str, int | None]] = {
        "old": {}, "new": {"swap_in": 4 * MiB, "swap_out": 4 * MiB}}
    counters[side][counter] = None
    old, new = sample(T0, **counters["old"]), sample(T0 + 2, **counters["new"])
    got = derive(snap(stats=old), snap(at=T0 + 3, stats=new))
    assert got.swap_rate is None
    assert got.major_fault_rate == 0.0  # the fault counters were sent: that rate is known


@pytest.mark.parametrize("which", ["old", "new"])
def test_a_fault_counter_the_guest_did_not_send_leaves_the_fault_rate_unknown(
    which: str,
) -> None:
    old = sample(T0, major_faults=None if which == "old" else 0)
    new = sample(T0 + 2, major_faults=None if which == "new" else 500)
    got = derive(snap(stats=old), snap(at=T0 + 3, stats=new))
    assert got.major_fault_rate is None and got.swap_rate == 0.0


def test_two_samples_without_swapping_or_faults_have_rates_of_zero_not_unknown() -> None:
    got = derive(snap(stats=sample(T0)), snap(at=T0 + 3, stats=sample(T0 + 2)))
    assert got.swap_rate == 0.0 and got.major_fault_rate == 0.0
    data = got.to_json()
    assert data["swap_rate"] == 0 and data["major_fault_rate"] == 0
    assert got.status is VmStatus.OK


@pytest.mark.parametrize(("old", "new"), [
    (None, sample(T0 + 2)),  # the previous snapshot had no stats
    (sample(T0), None),  # this one has none
    # A sample stamped 0 is no sample ("the guest driver never reported"), whatever counters
    # came with it: there are not two samples to take a rate over.
    (GuestStats(last_update=0, swap_in=0, swap_out=0, major_faults=0), sample(T0 + 2)),
])
def test_no_rates_without_two_reported_samples(old: GuestStats | None,
                                               new: GuestStats | None) -> None:
    first = snap().with_changes(stats=old)
    got = derive(first, snap(at=T0 + 3).with_changes(stats=new))
    assert got.swap_rate is None and got.major_fault_rate is None


def test_the_same_sample_read_again_keeps_both_rates() -> None:
    first = derive(snap(stats=sample(T0)),
                   snap(at=T0 + 3, stats=sample(T0 + 2, swap_in=2 * MiB, major_faults=300)))
    assert first.swap_rate == MiB and first.major_fault_rate == 150.0
    again = derive(first, snap(at=T0 + 4, stats=sample(T0 + 2, swap_in=2 * MiB,
                                                        major_faults=300)))
    assert again.swap_rate == MiB and again.major_fault_rate == 150.0
    assert again.status is VmStatus.PRESSURE


# --- the snapshot JSON (docs/cli.md: its keys are API) --------------------------------------


@pytest.mark.parametrize("owner", [Owner.BALLOONCTL, Owner.FOREIGN])
def test_owner_is_in_the_json_and_survives_the_round_trip(owner: Owner) -> None:
    data = snap(owner=owner).to_json()
    assert data["owner"] == owner.value in ("balloonctl", "foreign")
    back = BalloonState.from_json(json.loads(json.dumps(data)))
    assert back.owner is owner and back.to_json() == data


def test_a_move_seen_in_a_snapshot_has_that_snapshots_time() -> None:
    # moved_at and time are the same instant here; the JSON must not tell them apart.
    got = derive(snap(actual=GiB), snap(at=T0 + 5.123456, actual=2 * GiB))
    data = got.to_json()
    assert data["moved_at"] == data["time"]
    assert data["time"] == pytest.approx(T0 + 5.123456, abs=1e-3)


def test_a_fault_rate_below_one_per_second_is_not_shown_as_zero() -> None:
    # 3 major faults in 10 s is 0.3 per second
    got = derive(snap(stats=sample(T0)),
                 snap(at=T0 + 11, stats=sample(T0 + 10, major_faults=3)))
    assert got.to_json()["major_fault_rate"] == pytest.approx(0.3, abs=0.05)
