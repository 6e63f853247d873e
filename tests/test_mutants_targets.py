"""What balloonctl remembers about a run of a VM (``balloonctl.targets``): the cases
`./dev mutate` checks, in-process and fast.

Oracles: the module docstring (the run's entry, the foreign-writer rules 1-3 with
``CONVERGED_TOLERANCE`` and ``FOREIGN_MARGIN``, deflate-on-oom, ``stale_after``), the
docstrings of ``RememberedTargets``' methods and docs/CONTRACTS.md ("balloonctl.targets").
The layer below ``RememberedTargets`` is faked: ``Vm`` is a ``TargetsClient`` (the protocol
``BalloonClient`` and ``LibvirtClient`` fit) and the store is a ``MemoryStore``; the same
calls over the fake QEMU are in tests/test_client_target.py and tests/test_foreign.py.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from balloonctl.errors import SizeError, UnsafeTarget
from balloonctl.model import CONVERGED_TOLERANCE, Owner
from balloonctl.store import MemoryStore
from balloonctl.targets import FOREIGN_MARGIN, RememberedTargets, foreign_change
from balloonctl.units import GiB, MiB, parse_target

ADDRESS = "/run/balloonctl-test/vm1.qmp"
RUN = "run-1"
T = 1536 * MiB


class Run:
    def __init__(self) -> None:
        self.known: str | None = None

    def known_instance_id(self) -> str | None:
        return self.known


class Vm:
    """A VM's client as ``RememberedTargets`` sees it: its run is known once read."""

    name = "vm1"
    address = ADDRESS
    vm = "vm1"

    def __init__(self, instance: str | None = RUN, *, ram: int = 4 * GiB,
                 actual: int = 4 * GiB) -> None:
        self.instance = instance
        self.ram = ram
        self.actual = actual
        self.run = Run()
        self.queries = 0

    async def instance_id(self) -> str | None:
        self.run.known = self.instance
        return self.instance

    async def guest_ram(self) -> int:
        self.queries += 1
        return self.ram

    async def query_actual(self) -> int:
        self.queries += 1
        return self.actual


class BrokenStore(MemoryStore):
    """A store that cannot be written (a read-only state directory)."""

    def edit(self, key: str, change: Any) -> dict[str, Any]:
        raise PermissionError(13, "Read-only file system")


def remembered(vm: Vm | None = None, *, store: MemoryStore | None = None,
               hint: bool | None = None, stale_after: float = 120.0) -> RememberedTargets:
    return RememberedTargets(vm or Vm(), store if store is not None else MemoryStore(),
                             hint=hint, stale_after=stale_after)


def entry(**values: Any) -> MemoryStore:
    """A store whose entry for the VM belongs to run ``RUN`` and holds ``values``."""
    return MemoryStore({ADDRESS: {"instance": RUN, **values}})


def stored(targets: RememberedTargets) -> dict[str, Any]:
    return targets.store.get(ADDRESS)


# ---- foreign_change: the rules' words and edges ------------------------------------------


def test_each_rule_says_what_actual_did_in_sizes() -> None:
    assert foreign_change(T, GiB, reached=True) == (
        "actual 1 GiB left the target 1.5 GiB it had reached")
    assert foreign_change(T, 1920 * MiB, reached=False, seen=1664 * MiB) == (
        "actual 1.9 GiB moved away from the target 1.5 GiB (from 1.6 GiB)")
    assert foreign_change(T, GiB, reached=False, set_from=2 * GiB) == (
        "actual 1 GiB is off the way from 2 GiB to the target 1.5 GiB")


def test_rule_one_needs_reached_and_a_move_past_the_tolerance() -> None:
    assert foreign_change(T, T - CONVERGED_TOLERANCE - 1, reached=True) is not None
    assert foreign_change(T, T + CONVERGED_TOLERANCE + 1, reached=True) is not None
    # not reached, nothing else known: a stuck balloon, never foreign
    assert foreign_change(T, GiB, reached=False) is None
    assert foreign_change(T, 2 * GiB, reached=False) is None


def test_deflate_on_oom_explains_only_a_rise() -> None:
    assert foreign_change(T, T + CONVERGED_TOLERANCE + 1, reached=True,
                          deflate_on_oom=True) is None
    assert foreign_change(T, T - CONVERGED_TOLERANCE - 1, reached=True,
                          deflate_on_oom=True) is not None
    assert foreign_change(T, T + GiB, reached=True, deflate_on_oom=None) is not None


def test_rule_two_measures_from_the_earlier_observation_both_ways() -> None:
    # inflating down to T: seen 256 MiB above it, now more than a margin further up
    seen = T + 256 * MiB
    assert foreign_change(T, seen + FOREIGN_MARGIN, reached=False, seen=seen) is None
    assert foreign_change(T, seen + FOREIGN_MARGIN + 1, reached=False, seen=seen) is not None
    # deflating up to T: seen below it, now further below
    seen = T - 256 * MiB
    assert foreign_change(T, seen - FOREIGN_MARGIN, reached=False, seen=seen) is None
    assert foreign_change(T, seen - FOREIGN_MARGIN - 1, reached=False, seen=seen) is not None
    # crossing T to the other side by the same distance is not "further away"
    assert foreign_change(T, T - 256 * MiB, reached=False, seen=T + 256 * MiB) is None


def test_rule_three_the_way_from_either_side_with_its_margin() -> None:
    # inflating: from 2 GiB down to T
    start = 2 * GiB
    assert foreign_change(T, start + FOREIGN_MARGIN, reached=False, set_from=start) is None
    assert foreign_change(T, start + FOREIGN_MARGIN + 1, reached=False,
                          set_from=start) is not None
    assert foreign_change(T, T - FOREIGN_MARGIN, reached=False, set_from=start) is None
    assert foreign_change(T, T - FOREIGN_MARGIN - 1, reached=False, set_from=start) is not None
    # deflating: from 1 GiB up to T (the way is the same band, the other way round)
    start = GiB
    assert foreign_change(T, T + FOREIGN_MARGIN, reached=False, set_from=start) is None
    why = foreign_change(T, T + FOREIGN_MARGIN + 1, reached=False, set_from=start)
    assert why is not None and "off the way from 1 GiB to the target 1.5 GiB" in why
    assert foreign_change(T, start - FOREIGN_MARGIN, reached=False, set_from=start) is None
    assert foreign_change(T, start - FOREIGN_MARGIN - 1, reached=False,
                          set_from=start) is not None


def test_rule_three_is_checked_when_rule_two_finds_nothing() -> None:
    # closer than the earlier observation, but past T by more than the margin
    why = foreign_change(T, T - 2 * FOREIGN_MARGIN, reached=False, seen=T - 3 * FOREIGN_MARGIN,
                         set_from=2 * GiB)
    assert why is not None and why.startswith("actual 1.4 GiB is off the way")


# ---- the run's entry ----------------------------------------------------------------------


def test_an_entry_belongs_to_its_run_only() -> None:
    targets = remembered(store=entry(target=T))
    assert targets.entry(RUN) == {"instance": RUN, "target": T}
    assert targets.entry("run-2") == {}
    assert targets.entry(None) == {}
    # an entry without an instance (older balloonctl) is nobody's
    old = remembered(store=MemoryStore({ADDRESS: {"target": T}}))
    assert old.entry(RUN) == {}


async def test_remembered_reads_the_run_it_reaches() -> None:
    assert await remembered(store=entry(hint=True)).remembered() == {"instance": RUN,
                                                                     "hint": True}
    assert await remembered(Vm("run-2"), store=entry(hint=True)).remembered() == {}


async def test_remember_replaces_another_runs_entry_and_keeps_its_own() -> None:
    targets = remembered(store=MemoryStore({ADDRESS: {"instance": "run-0", "target": T,
                                                      "foreign": {"why": "x"}}}))
    await targets.remember(hint=True)
    assert stored(targets) == {"instance": RUN, "hint": True}
    await targets.remember(hint_method="drop")
    assert stored(targets) == {"instance": RUN, "hint": True, "hint_method": "drop"}


async def test_remember_without_a_known_run_starts_afresh() -> None:
    targets = remembered(Vm(None), store=MemoryStore({ADDRESS: {"instance": None,
                                                                "hint": True}}))
    await targets.remember(target=T)
    assert stored(targets) == {"instance": None, "target": T}


async def test_setting_a_target_drops_the_foreign_mark_other_values_keep_it() -> None:
    targets = remembered(store=entry(foreign={"why": "moved"}))
    await targets.remember(hint=True)
    assert stored(targets)["foreign"] == {"why": "moved"}
    await targets.remember(target=T)
    assert "foreign" not in stored(targets) and stored(targets)["target"] == T


async def test_a_target_set_at_the_same_time_replaces_only_an_older_one_never_a_later() -> None:
    # a later target stands (never replaced with an older one); one set at the same instant
    # is not older, so the last to be recorded stands
    targets = remembered(store=entry(target=T, target_at=1000.0))
    await targets.remember(target=2 * T, target_at=999.0)
    assert (stored(targets)["target"], stored(targets)["target_at"]) == (T, 1000.0)
    await targets.remember(target=2 * T, target_at=1000.0)
    assert (stored(targets)["target"], stored(targets)["target_at"]) == (2 * T, 1000.0)


def test_the_hint_as_set_on_the_run_else_the_inventory_preference() -> None:
    for preference in (None, False, True):
        targets = remembered(hint=preference)
        assert targets.hint_on({"hint": True}) is True
        assert targets.hint_on({"hint": False}) is False
        assert targets.hint_on({}) is (preference is True)


async def test_last_target_is_known_only_once_the_run_was_read() -> None:
    targets = remembered(store=entry(target=T))
    assert targets.last_target() is None  # no I/O: the run is not known yet
    await targets.remembered()
    assert targets.last_target() == T
    targets.store.update(ADDRESS, target="1.5G")  # not balloonctl's shape
    assert targets.last_target() is None


# ---- observe: who owns the balloon ------------------------------------------------------


async def test_a_foreign_mark_answers_first() -> None:
    vm = Vm()
    targets = remembered(vm, store=entry(target=T, foreign={"why": "moved"}))
    assert await targets.observe() == (None, Owner.FOREIGN)
    assert vm.queries == 0


async def test_nothing_remembered_is_nobodys() -> None:
    assert await remembered().observe() == (None, None)
    assert await remembered(store=entry(target=float(T))).observe() == (None, None)
    # another run's target does not count
    assert await remembered(Vm("run-2"), store=entry(target=T, target_at=time.time(),
                                                     target_reached=True)).observe(
        actual=T) == (None, None)


async def test_a_target_above_guest_ram_never_stands() -> None:
    ram = 2 * GiB
    now = time.time()
    assert await remembered(store=entry(target=ram + 1, target_at=now)).observe(
        actual=ram + 1, guest_ram=ram) == (None, None)
    assert await remembered(store=entry(target=ram, target_at=now)).observe(
        actual=ram, guest_ram=ram) == (ram, Owner.BALLOONCTL)


async def test_actual_and_guest_ram_are_queried_only_when_not_given() -> None:
    now = time.time()
    vm = Vm(ram=2 * GiB, actual=T)
    targets = remembered(vm, store=entry(target=T, target_at=now))
    assert await targets.observe() == (T, Owner.BALLOONCTL)
    assert vm.queries == 2
    # given figures win over the VM's: guest RAM below the target, actual off it
    vm = Vm(ram=4 * GiB, actual=T)
    targets = remembered(vm, store=entry(target=T, target_at=now, target_reached=True))
    assert await targets.observe(guest_ram=GiB) == (None, None)
    assert vm.queries == 1  # actual only
    vm = Vm(ram=4 * GiB, actual=T)
    targets = remembered(vm, store=entry(target=T, target_at=now, target_reached=True))
    assert await targets.observe(actual=GiB) == (None, Owner.FOREIGN)
    assert vm.queries == 1  # guest RAM only


async def test_reaching_the_target_within_the_tolerance_is_recorded() -> None:
    for actual in (T - CONVERGED_TOLERANCE, T + CONVERGED_TOLERANCE):
        targets = remembered(store=entry(target=T, target_at=time.time()))
        assert await targets.observe(actual=actual) == (T, Owner.BALLOONCTL)
        assert stored(targets)["target_reached"] is True
    # one byte further is still on its way (not reached)
    targets = remembered(store=entry(target=T, target_at=time.time(), target_from=2 * GiB))
    assert await targets.observe(actual=T + CONVERGED_TOLERANCE + 1) == (T, Owner.BALLOONCTL)
    assert "target_reached" not in stored(targets)


async def test_leaving_a_reached_target_marks_the_run_foreign() -> None:
    set_at = time.time() - 5
    targets = remembered(store=entry(target=T, target_at=set_at, target_reached=True,
                                     target_from=2 * GiB, hint=True))
    before = time.time()
    assert await targets.observe(actual=GiB) == (None, Owner.FOREIGN)
    after = stored(targets)
    mark = after.pop("foreign")
    # the target's keys are gone, the rest of the entry stays
    assert after == {"instance": RUN, "hint": True}
    assert mark["previous"] == T and mark["actual"] == GiB
    assert mark["why"] == "actual 1 GiB left the target 1.5 GiB it had reached"
    assert mark["journaled"] is False
    assert before <= mark["at"] <= time.time()
    assert await targets.foreign() == mark
    # and it stays foreign whatever actual does next, until a target is set
    assert await targets.observe(actual=T) == (None, Owner.FOREIGN)


async def test_deflate_on_oom_forgets_the_target_without_blaming_anyone() -> None:
    targets = remembered(store=entry(target=T, target_at=time.time(), target_reached=True,
                                     hint=True))
    assert await targets.observe(actual=2 * GiB, deflate_on_oom=True) == (None, None)
    assert stored(targets) == {"instance": RUN, "hint": True}


async def test_an_unreached_target_stands_until_stale_after() -> None:
    stuck = T + 256 * MiB  # between where it was set (2 GiB) and T
    fresh = remembered(store=entry(target=T, target_at=time.time() - 50, target_from=2 * GiB),
                       stale_after=60)
    assert await fresh.observe(actual=stuck) == (T, Owner.BALLOONCTL)
    assert stored(fresh)["target"] == T
    old = remembered(store=entry(target=T, target_at=time.time() - 70, target_from=2 * GiB,
                                 hint=True), stale_after=60)
    assert await old.observe(actual=stuck) == (None, None)
    assert stored(old) == {"instance": RUN, "hint": True}
    # no time of setting: nothing says it is fresh
    untimed = remembered(store=entry(target=T, target_at="yesterday"))
    assert await untimed.observe(actual=stuck) == (None, None)


async def test_an_earlier_observation_counts_only_if_made_after_the_target_was_set() -> None:
    set_at = time.time() - 10
    away = T + 256 * MiB + FOREIGN_MARGIN + MiB
    for when, owner in ((set_at, Owner.FOREIGN), (set_at + 1, Owner.FOREIGN),
                        (set_at - 1, Owner.BALLOONCTL)):
        targets = remembered(store=entry(target=T, target_at=set_at, target_from=2 * GiB))
        result = await targets.observe(actual=away, seen=(T + 256 * MiB, when))
        assert result[1] is owner, when - set_at
    # without a time of setting the earlier observation says nothing (and the target is
    # too old to stand)
    targets = remembered(store=entry(target=T, target_from=2 * GiB))
    assert await targets.observe(actual=away, seen=(T + 256 * MiB, set_at)) == (None, None)
    assert "foreign" not in stored(targets)


async def test_an_earlier_observation_is_its_actual_not_its_time() -> None:
    # sizes far from a time.time() value: seen on the way down to 8 GiB at 9 GiB, then
    # more than a margin further up
    target, seen = 8 * GiB, 9 * GiB
    targets = remembered(store=entry(target=target, target_at=time.time() - 1,
                                     target_from=10 * GiB))
    away = seen + FOREIGN_MARGIN + MiB
    assert await targets.observe(actual=away, guest_ram=16 * GiB,
                                 seen=(seen, time.time())) == (None, Owner.FOREIGN)
    assert "moved away from the target 8 GiB (from 9 GiB)" in stored(targets)["foreign"]["why"]


async def test_a_reached_target_seen_again_is_not_written_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = {ADDRESS: {"instance": RUN, "target": T, "target_at": time.time(),
                      "target_reached": True}}
    targets = remembered(store=BrokenStore(data))  # any write would fail loudly in the log
    with caplog.at_level(logging.WARNING, logger="balloonctl.targets"):
        assert await targets.observe(actual=T) == (T, Owner.BALLOONCTL)
    assert caplog.messages == []


async def test_what_observe_concludes_is_logged_with_the_vm_and_sizes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="balloonctl.targets"):
        targets = remembered(store=entry(target=T, target_at=time.time(), target_reached=True))
        await targets.observe(actual=GiB)
        targets = remembered(store=entry(target=T, target_at=time.time() - 200))
        await targets.observe(actual=T + 256 * MiB)
    assert caplog.messages == [
        "vm1: moved by another writer: actual 1 GiB left the target 1.5 GiB it had reached",
        "vm1: forgetting stale target 1.5 GiB (actual 1.8 GiB)",
    ]


async def test_where_it_was_set_from_counts_only_as_bytes() -> None:
    # 1 GiB is off the way from 2 GiB to T; a target_from of another shape says nothing
    targets = remembered(store=entry(target=T, target_at=time.time(), target_from="2G"))
    assert await targets.observe(actual=GiB) == (T, Owner.BALLOONCTL)
    targets = remembered(store=entry(target=T, target_at=time.time(), target_from=2 * GiB))
    assert await targets.observe(actual=GiB) == (None, Owner.FOREIGN)


async def test_current_target_is_the_standing_target() -> None:
    targets = remembered(store=entry(target=T, target_at=time.time()))
    assert await targets.current_target(actual=T, guest_ram=4 * GiB) == T
    # the figures given are the ones judged (the VM's actual, 1 GiB, would be foreign)
    vm = Vm(actual=GiB)
    targets = remembered(vm, store=entry(target=T, target_at=time.time(), target_reached=True))
    assert await targets.current_target(actual=T) == T
    assert vm.queries == 1  # guest RAM only
    targets = remembered(store=entry(target=T, target_at=time.time()))
    assert await targets.current_target(actual=T, guest_ram=GiB) is None


class ChangingStore(MemoryStore):
    """Another balloonctl process sets a new target between this one's read and its edit."""

    def __init__(self, data: dict[str, dict[str, Any]], **new: Any) -> None:
        super().__init__(data)
        self.new = new

    def edit(self, key: str, change: Any) -> dict[str, Any]:
        super().edit(key, lambda e: {**e, **self.new})
        return super().edit(key, change)


@pytest.mark.parametrize("new", [{"target": GiB}, {"target_at": 1.0}, {"instance": "run-2"}])
async def test_bookkeeping_leaves_a_target_set_meanwhile_alone(new: dict[str, Any]) -> None:
    set_at = time.time()
    reached = {ADDRESS: {"instance": RUN, "target": T, "target_at": set_at,
                         "target_reached": True}}
    # foreign: the mark is not put over the newer target
    targets = remembered(store=ChangingStore(reached, **new))
    assert await targets.observe(actual=GiB) == (None, Owner.FOREIGN)
    assert "foreign" not in stored(targets) and stored(targets)["target_reached"]
    # forgotten (stale): the newer target stays
    stuck = {ADDRESS: {"instance": RUN, "target": T, "target_at": set_at - 200}}
    targets = remembered(store=ChangingStore(stuck, **new))
    assert await targets.observe(actual=T + 256 * MiB) == (None, None)
    assert "target" in stored(targets)
    # reached: the newer target is not marked reached
    fresh = {ADDRESS: {"instance": RUN, "target": T, "target_at": set_at}}
    targets = remembered(store=ChangingStore(fresh, **new))
    assert await targets.observe(actual=T) == (T, Owner.BALLOONCTL)
    assert "target_reached" not in stored(targets)


async def test_a_read_only_store_does_not_fail_an_observation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = {ADDRESS: {"instance": RUN, "target": T, "target_at": time.time(),
                      "target_reached": True}}
    targets = remembered(store=BrokenStore(data))
    with caplog.at_level(logging.WARNING, logger="balloonctl.targets"):
        assert await targets.observe(actual=GiB) == (None, Owner.FOREIGN)
    assert caplog.messages == [
        "vm1: cannot update balloonctl's state: [Errno 13] Read-only file system"]


# ---- foreign marks -----------------------------------------------------------------------


async def test_the_foreign_mark_is_a_copy_or_none() -> None:
    targets = remembered(store=entry(foreign={"why": "moved", "journaled": False}))
    mark = await targets.foreign()
    assert mark == {"why": "moved", "journaled": False}
    assert mark is not None
    mark["why"] = "changed"
    assert (await targets.foreign()) == {"why": "moved", "journaled": False}
    assert await remembered(store=entry(foreign="moved")).foreign() is None
    assert await remembered(store=entry()).foreign() is None


async def test_only_the_first_claim_gets_the_foreign_report() -> None:
    targets = remembered(store=entry(foreign={"why": "moved", "journaled": False}))
    assert await targets.claim_foreign_report() == {"why": "moved", "journaled": False}
    assert stored(targets)["foreign"] == {"why": "moved", "journaled": True}
    assert await targets.claim_foreign_report() is None
    # another run's mark, or no mark of the right shape, is nothing to report
    assert await remembered(Vm("run-2"), store=entry(
        foreign={"why": "moved", "journaled": False})).claim_foreign_report() is None
    assert await remembered(store=entry(foreign="moved")).claim_foreign_report() is None
    assert await remembered(store=entry()).claim_foreign_report() is None


async def test_reclaim_forgets_the_mark_of_this_run_only() -> None:
    targets = remembered(store=entry(foreign={"why": "moved"}, hint=True))
    assert await targets.reclaim() is True
    assert stored(targets) == {"instance": RUN, "hint": True}
    assert await targets.reclaim() is False
    other = remembered(Vm("run-2"), store=entry(foreign={"why": "moved"}))
    assert await other.reclaim() is False
    assert stored(other)["foreign"] == {"why": "moved"}


async def test_adopt_remembers_actual_as_a_reached_target() -> None:
    targets = remembered(store=entry(hint=True))
    before = time.time()
    assert await targets.adopt(T) is True
    after = stored(targets)
    assert before <= after.pop("target_at") <= time.time()
    assert after == {"instance": RUN, "hint": True, "target": T, "target_reached": True,
                     "target_from": T}
    # a later move by someone else is noticed
    assert await targets.observe(actual=GiB) == (None, Owner.FOREIGN)


async def test_adopt_leaves_an_owned_or_foreign_run_alone() -> None:
    for values in ({"target": GiB}, {"foreign": {"why": "moved"}}):
        targets = remembered(store=entry(**values))
        assert await targets.adopt(T) is False
        assert stored(targets) == {"instance": RUN, **values}
    # another run's entry is replaced; an unknown run is never adopted
    targets = remembered(store=MemoryStore({ADDRESS: {"instance": "run-0", "target": GiB}}))
    assert await targets.adopt(T) is True
    assert stored(targets)["instance"] == RUN and stored(targets)["target"] == T
    targets = remembered(Vm(None), store=MemoryStore())
    assert await targets.adopt(T) is False
    assert stored(targets) == {}


# ---- resolve -----------------------------------------------------------------------------


async def test_relative_targets_count_from_the_standing_target_else_actual() -> None:
    vm = Vm(ram=4 * GiB, actual=3 * GiB)
    targets = remembered(vm, store=entry(target=2 * GiB, target_at=time.time(),
                                         target_from=4 * GiB))
    limits: dict[str, Any] = {"minimum": None, "maximum": None}
    # the balloon is on its way from 4 GiB to 2 GiB (at 3 GiB): -512M is from 2 GiB
    assert await targets.resolve(parse_target("-512M"), **limits) == 1536 * MiB
    nothing = remembered(Vm(ram=4 * GiB, actual=3 * GiB))
    assert await nothing.resolve(parse_target("-512M"), **limits) == 2560 * MiB
    assert await nothing.resolve(parse_target("50%"), **limits) == 2 * GiB
    assert await nothing.resolve(GiB, **limits) == GiB
    with pytest.raises(SizeError):
        await nothing.resolve(parse_target("-3G"), **limits)


async def test_resolve_rounds_up_to_the_granule_and_validates() -> None:
    targets = remembered(Vm(ram=4 * GiB))
    limits: dict[str, Any] = {"minimum": None, "maximum": None}
    assert await targets.resolve(GiB + 1, granule=1024, **limits) == GiB + 1024
    assert await targets.resolve(GiB + 1024, granule=1024, **limits) == GiB + 1024
    assert await targets.resolve(GiB + 1, **limits) == GiB + 1
    with pytest.raises(UnsafeTarget) as info:
        await targets.resolve(4 * GiB + 1, **limits)
    assert info.value.vm == "vm1"
    with pytest.raises(UnsafeTarget):
        await targets.resolve(2 * GiB, minimum=None, maximum=GiB)
    with pytest.raises(UnsafeTarget):
        await targets.resolve(GiB, minimum=2 * GiB, maximum=None)
    assert await targets.resolve(GiB, minimum=2 * GiB, maximum=None, force=True) == GiB
