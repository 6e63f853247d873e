"""The policy's rules and reasons at their edges: the cases `./dev mutate` found untested.

The main oracle is docs/policy.md's "Reasons": each scenario below is built so that the policy
must say one of the documented lines word for word (``assert_documented`` checks the line is
in the docs, so the docs and these tests cannot drift apart), with the numbers the rules give.
The other oracles are the numbered rules themselves (bounds, emergency, thrashing, the host
short or with spare memory, the band in between, step and deadband, "in inverse proportion
to their shares", "none more than it has above its reserves or its floor").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from balloonctl.host import HostMemory, Psi
from balloonctl.model import BalloonState, GuestStats, HintMode, HintState
from balloonctl.policy import Action, Decision, PolicySettings, VmInput, VmPolicy, VmRates, decide
from balloonctl.units import GiB, KiB, MiB

NOW = 1_000_000
DOCS = (Path(__file__).resolve().parent.parent / "docs" / "policy.md").read_text()
DEFAULTS = PolicySettings()  # the documented defaults: step 128 MiB, deadband 16 MiB, ...


def host(total: int, available: int, psi: float | None = None) -> HostMemory:
    return HostMemory(total=total, available=available, free=available, cached=0, anon=0,
                      swap_total=0, swap_free=0,
                      psi=None if psi is None else Psi(psi, 0, 0, 0, 0, 0))


def short(total: int, need: int, psi: float | None = None) -> HostMemory:
    """A host whose available memory is ``need`` below the 15 % target."""
    return host(total, int(total * 0.15) - need, psi)


def spare(total: int, extra: int) -> HostMemory:
    """A host whose available memory is ``extra`` above target + hysteresis (15 + 5 %)."""
    return host(total, int(total * 0.15) + int(total * 0.05) + extra)


def vm(name: str = "vm1", *, ram: int = 4 * GiB, actual: int = 3 * GiB,
       free: int | None = 1 * GiB, cache: int = 0, available: int | None = None,
       hint: bool = False, mode: HintMode = HintMode.DEVICE, age: int = 1,
       stats: bool = True, **kw: Any) -> BalloonState:
    kw.setdefault("reachable", True)
    if available is None and free is not None:
        available = free + cache
    guest = GuestStats(last_update=NOW - age, free_memory=free, disk_caches=cache,
                       available_memory=available) if stats else GuestStats()
    return BalloonState(name=name, qmp=f"/{name}.qmp", guest_ram=ram, actual=actual,
                        stats=guest, hint=HintState(mode=mode, enabled=hint),
                        taken_at=float(NOW), **kw)


def run(*vms: BalloonState | VmInput, on: HostMemory,
        settings: PolicySettings = DEFAULTS) -> dict[str, Decision]:
    inputs = [v if isinstance(v, VmInput) else VmInput(v) for v in vms]
    out = decide(inputs, on, settings)
    assert [d.name for d in out] == [v.state.name for v in inputs]
    for d, v in zip(out, inputs, strict=True):
        if d.action is not Action.LEAVE:
            assert d.current == v.state.actual, d  # every decision says where it started
    return {d.name: d for d in out}


def assert_documented(reason: str) -> None:
    assert f"    {reason}\n" in DOCS, f"not a documented reason: {reason!r}"


def moved(d: Decision) -> int:
    assert d.target is not None and d.current is not None, d
    return d.target - d.current


STEADY = host(10 * GiB, 17 * GiB // 10)  # 17 %: inside the 15-20 % band


# --- the documented reasons, word for word ------------------------------------------------------


def test_left_alone_with_the_documented_words() -> None:
    got = run(vm("down", reachable=False, error=None),
              vm("nosize", actual=None),  # type: ignore[arg-type]
              vm("noram", ram=None),  # type: ignore[arg-type]
              vm("old", age=95),
              vm("ok"), on=STEADY)
    assert got["down"].reason == "left alone: unreachable (no answer)"
    for name in ("nosize", "noram"):
        assert got[name].action is Action.LEAVE and got[name].target is None
        assert_documented(got[name].reason)
        assert got[name].reason == "left alone: guest RAM or balloon size unknown"
    assert got["old"].reason == "left alone: stats are stale (last report 95 s ago)"
    assert_documented(got["old"].reason)
    assert got["ok"].action is Action.HOLD


def test_polling_off_is_left_alone_as_stale_saying_so() -> None:
    # QEMU's default is polling off (interval 0): the stats are frozen however fresh the last
    # report is, and the reason names the cause. An interval of 1 s is polling, not off.
    got = run(vm("frozen", polling_interval=0), vm("fast", polling_interval=1), on=STEADY)
    assert got["frozen"].action is Action.LEAVE and got["frozen"].target is None
    assert got["frozen"].reason == "left alone: stats are stale (stats polling is off)"
    assert_documented(got["frozen"].reason)
    assert got["fast"].action is Action.HOLD


def test_the_bounds_at_once() -> None:
    got = run(vm("low", actual=900 * MiB, floor=1 * GiB),
              vm("high", actual=3 * GiB, maximum=2 * GiB), on=STEADY)
    assert got["low"].reason == "below its floor 1 GiB: raised to it at once"
    assert (got["low"].action, got["low"].target) == (Action.GROW, 1 * GiB)
    assert got["high"].reason == "above its maximum 2 GiB: lowered to it at once"
    assert (got["high"].action, got["high"].target) == (Action.SHRINK, 2 * GiB)
    for d in got.values():
        assert_documented(d.reason)


def test_an_emergency_deflates_to_the_free_reserve() -> None:
    d = run(vm(free=40 * MiB), on=STEADY)["vm1"]
    assert d.reason == ("vm1 available 40 MiB < emergency level 64 MiB: deflate at once by "
                        "216 MiB (to its free reserve 256 MiB)")
    assert_documented(d.reason)
    assert (d.action, moved(d)) == (Action.GROW, 216 * MiB)


def test_an_emergency_at_guest_ram_holds_and_says_so() -> None:
    d = run(vm(actual=4 * GiB, free=40 * MiB), on=STEADY)["vm1"]
    assert (d.action, d.target) == (Action.HOLD, None)
    assert d.reason == ("vm1 available 40 MiB < emergency level 64 MiB, but already at guest "
                        "RAM 4 GiB")


def test_below_the_floor_and_in_an_emergency_says_both() -> None:
    d = run(vm(actual=900 * MiB, floor=1 * GiB, free=40 * MiB), on=STEADY)["vm1"]
    assert d.reason == ("below its floor 1 GiB: raised to it at once; vm1 available 40 MiB < "
                        "emergency level 64 MiB: deflate at once by 216 MiB (to its free "
                        "reserve 256 MiB)")
    assert d.target == 900 * MiB + 216 * MiB


def test_at_the_floor_exactly_is_not_below_it() -> None:
    d = run(vm(actual=1 * GiB, floor=1 * GiB, free=40 * MiB), on=STEADY)["vm1"]
    assert d.reason.startswith("vm1 available 40 MiB < emergency level 64 MiB: deflate")


def test_thrashing_with_the_documented_words() -> None:
    swaps = run(VmInput(vm(), rates=VmRates(swap_in=8 * MiB)), on=STEADY)["vm1"]
    assert swaps.reason == "vm1 swaps in 8 MiB/s > 1 MiB/s: never shrunk, given 128 MiB back first"
    assert (swaps.action, moved(swaps)) == (Action.GROW, 128 * MiB)
    faults = run(VmInput(vm(actual=4 * GiB), rates=VmRates(major_faults=250)), on=STEADY)["vm1"]
    assert faults.reason == ("vm1 major faults 250/s > 100/s: never shrunk; already at guest "
                             "RAM 4 GiB")
    assert (faults.action, faults.target) == (Action.HOLD, None)
    for d in (swaps, faults):
        assert_documented(d.reason)
    both = run(VmInput(vm(), rates=VmRates(swap_in=8 * MiB, major_faults=250)), on=STEADY)
    assert both["vm1"].reason.startswith(
        "vm1 swaps in 8 MiB/s > 1 MiB/s and major faults 250/s > 100/s: never shrunk")


@pytest.mark.parametrize(("below", "action", "ends"), [
    (100 * MiB, Action.GROW, "given 100 MiB back first"),  # less than a step: up to RAM only
    (16 * MiB, Action.GROW, "given 16 MiB back first"),  # at the deadband: moves
    (8 * MiB, Action.HOLD, "; 8 MiB below guest RAM 4 GiB, under the deadband 16 MiB"),
    (1, Action.HOLD, "; 1 B below guest RAM 4 GiB, under the deadband 16 MiB"),
])
def test_thrashing_near_guest_ram(below: int, action: Action, ends: str) -> None:
    d = run(VmInput(vm(actual=4 * GiB - below), rates=VmRates(swap_in=8 * MiB)),
            on=STEADY)["vm1"]
    assert d.action is action and d.reason.endswith(ends)
    if action is Action.GROW:
        assert d.target == 4 * GiB - below + int(ends.split()[1]) * MiB


def test_thrashing_under_a_mib_from_the_top_with_no_deadband_holds() -> None:
    settings = PolicySettings(deadband=0)
    d = run(VmInput(vm(actual=4 * GiB - 512 * KiB), rates=VmRates(swap_in=8 * MiB)),
            on=STEADY, settings=settings)["vm1"]
    assert (d.action, d.target) == (Action.HOLD, None)


def test_the_host_short_with_the_documented_words() -> None:
    total = 5000 * MiB  # 9 % available is 300 MiB short of 15 %
    roomy = PolicySettings(max_step=512 * MiB)
    got = run(vm("vm3", free=666 * MiB), on=short(total, 300 * MiB), settings=roomy)
    assert got["vm3"].reason == (
        "host available 9 % < 15 %: reclaim 300 MiB, vm3 has 410 MiB free above its reserve "
        "(hint off: cache counts as used): takes 300 MiB")
    got.update(run(vm("vm5", actual=1 * GiB, floor=1 * GiB, free=2 * GiB),
                   vm("vm6", free=200 * MiB), on=short(total, 300 * MiB)))
    assert got["vm5"].reason == ("host available 9 % < 15 %: reclaim 300 MiB, but vm5 is at its "
                                 "floor 1 GiB")
    assert got["vm6"].reason == ("host available 9 % < 15 %: reclaim 300 MiB, but vm6 has "
                                 "nothing above its reserves (hint off: cache counts as used)")
    total = 10000 * MiB  # 9 % is 600 MiB short
    got.update(run(vm("vm4", free=300 * MiB, cache=1 * GiB, hint=True),
                   on=short(total, 600 * MiB)))
    assert got["vm4"].reason == (
        "host available 9 % < 15 %: reclaim 600 MiB, vm4 has 896 MiB clean cache above its "
        "cache reserve and 44 MiB free above its reserve (hint on: cache first): takes 128 MiB "
        "(step limit 128 MiB)")
    assert moved(got["vm4"]) == -128 * MiB
    for d in got.values():
        assert_documented(d.reason)


def test_a_need_under_the_deadband_shows_enough_digits() -> None:
    total = 8000 * MiB
    d = run(vm(), on=short(total, 838861))["vm1"]  # 0.01 % short: 819 KiB
    assert d.reason == "host available 14.99 % < 15 %: reclaim 819 KiB, under the deadband 16 MiB"
    assert_documented(d.reason)
    assert (d.action, d.target) == (Action.HOLD, None)


def test_the_host_with_spare_memory_with_the_documented_words() -> None:
    total = 2727 * MiB  # 31 % available is 300 MiB above 20 %
    got = run(vm("vm7", free=56 * MiB, cache=200 * MiB), vm("top", actual=4 * GiB),
              on=spare(total, 300 * MiB))
    assert got["vm7"].reason == ("host available 31 % > 20 %: give back 300 MiB, vm7 is 200 MiB "
                                 "below its free reserve: gets 128 MiB (step limit 128 MiB)")
    assert moved(got["vm7"]) == 128 * MiB
    assert got["top"].reason == "host available 31 % > 20 %: already at guest RAM 4 GiB"
    shares = PolicySettings(max_step=256 * MiB,
                            vms={"a": VmPolicy(shares=2500), "b": VmPolicy(shares=2500)})
    got.update(run(vm("a"), vm("b"), vm("vm8"), on=spare(total, 300 * MiB), settings=shares))
    assert got["vm8"].reason == ("host available 31 % > 20 %: give back 300 MiB, vm8 has 768 MiB "
                                 "free above its reserve, 1000 shares: gets 50 MiB")
    assert [moved(got[n]) for n in ("a", "b", "vm8")] == [125 * MiB, 125 * MiB, 50 * MiB]
    got.update(run(vm("nearly", actual=4 * GiB - 512 * KiB), vm("other"),
                   on=spare(total, 300 * MiB)))
    assert got["nearly"].reason == ("host available 31 % > 20 %: give back 300 MiB, to other VMs "
                                    "first")
    for name in ("vm7", "top", "vm8", "nearly"):
        assert_documented(got[name].reason)


def test_a_part_under_the_deadband_says_so() -> None:
    total = 2727 * MiB
    settings = PolicySettings(max_step=256 * MiB,
                              vms={"a": VmPolicy(shares=37), "b": VmPolicy(shares=37),
                                   "vm9": VmPolicy(shares=1)})
    got = run(vm("a"), vm("b"), vm("vm9"), on=spare(total, 300 * MiB), settings=settings)
    assert [moved(got[n]) for n in ("a", "b")] == [148 * MiB, 148 * MiB]
    assert got["vm9"].reason == ("host available 31 % > 20 %: give back 300 MiB; vm9's part "
                                 "4 MiB is under the deadband 16 MiB")
    assert (got["vm9"].action, got["vm9"].target) == (Action.HOLD, None)
    # reclaiming: weights are inverse shares, so the VM with the most shares gives least
    inverse = PolicySettings(max_step=256 * MiB,
                             vms={"vm9": VmPolicy(shares=37), "a": VmPolicy(shares=1),
                                  "b": VmPolicy(shares=1)})
    got = run(vm("a", free=2 * GiB), vm("b", free=2 * GiB), vm("vm9", free=2 * GiB),
              on=short(10 * GiB, 300 * MiB), settings=inverse)
    assert got["vm9"].reason.endswith("; vm9's part 4 MiB is under the deadband 16 MiB")
    assert (got["vm9"].action, got["vm9"].target) == (Action.HOLD, None)


def test_moves_made_first_are_counted_in_the_host_figure() -> None:
    total = 16400 * MiB  # 16.04 % available, 246 MiB given to guests first: 14.5 %
    forced_low = vm("low", actual=1 * GiB - 246 * MiB, floor=1 * GiB)
    d = run(forced_low, vm("vm1"), on=host(total, int(total * 0.1604)))["vm1"]
    assert d.reason.startswith("host available 16 % (14.5 % after 246 MiB given to guests "
                               "first) < 15 %: reclaim ")
    assert "host available 16 % (14.5 % after 246 MiB given to guests first) < 15 %" in DOCS
    two = run(vm("l1", actual=900 * MiB, floor=1 * GiB), vm("l2", actual=900 * MiB, floor=1 * GiB),
              vm("vm1"), on=host(total, int(total * 0.1604)))["vm1"]
    assert "after 248 MiB given to guests first" in two.reason  # both raises count
    taken = run(vm("big", actual=3 * GiB, maximum=2 * GiB), vm("vm1"),
                on=host(total, int(total * 0.1604)))["vm1"]
    assert taken.reason.startswith("host available 16 % (22.3 % after 1 GiB taken from guests "
                                   "first) > 20 %: give back ")


# --- the host's state at its edges ---------------------------------------------------------------


def test_the_band_edges_do_not_move_anything() -> None:
    total = 10 * GiB
    target, upper = int(total * 0.15), int(total * 0.15) + int(total * 0.05)
    for available in (target, upper):
        d = run(vm(), on=host(total, available))["vm1"]
        assert (d.action, d.target) == (Action.HOLD, None)
        assert d.reason.endswith("within 15 %-20 %: no change")


def test_low_memory_and_stalls_are_both_named() -> None:
    d = run(vm(), on=short(10 * GiB, 300 * MiB, psi=12.5))["vm1"]
    assert d.reason.startswith("host available 12.1 % < 15 % and host PSI some avg10 12.5 % > "
                               "10 %: reclaim 300 MiB")


@pytest.mark.parametrize(("total", "available", "starts"), [
    (0, 0, "host available 0 % within 15 %-20 %: no change"),  # no figure: never divide by 0
    (1, 1, "host available 100 % > 20 %: give back 1 B"),
])
def test_a_host_without_memory_figures_does_not_break_the_policy(
        total: int, available: int, starts: str) -> None:
    assert run(vm(), on=host(total, available))["vm1"].reason.startswith(starts)


@pytest.mark.parametrize(("fraction", "shown"), [
    (0.0912, "host available 9.1 % < 15 %"),  # one decimal tells them apart
    (0.14993, "host available 14.99 % < 15 %"),  # two are needed, not three
    (0.149991, "host available 14.999 % < 15 %"),  # three are needed
])
def test_the_host_figure_has_just_enough_digits(fraction: float, shown: str) -> None:
    total = 100 * GiB
    d = run(vm(), on=host(total, int(total * fraction)))["vm1"]
    assert d.reason.startswith(shown + ":")


# --- per-VM settings reach the rules ------------------------------------------------------------


def test_per_vm_reserves_from_the_settings_apply_without_a_policy_of_its_own() -> None:
    settings = PolicySettings(max_step=1 * GiB, vms={"vm1": VmPolicy(free_reserve=512 * MiB,
                                                                   cache_reserve=0)})
    got = run(vm(free=1 * GiB, cache=100 * MiB, hint=True), on=short(10 * GiB, 700 * MiB),
              settings=settings)
    assert "100 MiB clean cache above its cache reserve and 512 MiB free above its reserve" \
        in got["vm1"].reason
    same = run(VmInput(vm(free=1 * GiB), policy=VmPolicy(free_reserve=512 * MiB)),
               on=short(10 * GiB, 700 * MiB), settings=PolicySettings(max_step=1 * GiB))
    assert "512 MiB free above its reserve" in same["vm1"].reason


def test_free_memory_stands_in_for_a_missing_memavailable() -> None:
    stats = GuestStats(last_update=NOW - 1, free_memory=40 * MiB)  # no MemAvailable
    state = vm().with_changes(stats=stats)
    d = run(state, on=STEADY)["vm1"]
    assert d.reason.startswith("vm1 available 40 MiB < emergency level 64 MiB")


@pytest.mark.parametrize("cache", [50 * MiB, None])
def test_cache_at_or_under_its_reserve_offers_nothing(cache: int | None) -> None:
    settings = PolicySettings(cache_reserve=0 if cache is None else 128 * MiB)
    state = vm(free=1 * GiB, hint=True).with_changes(
        stats=GuestStats(last_update=NOW - 1, free_memory=1 * GiB, disk_caches=cache,
                         available_memory=1 * GiB))
    d = run(state, on=short(10 * GiB, 100 * MiB), settings=settings)["vm1"]
    assert "has 0 B clean cache above its cache reserve and 768 MiB free" in d.reason


def test_equal_cache_and_free_to_spare_is_something_to_spare() -> None:
    d = run(vm(free=356 * MiB, cache=228 * MiB, hint=True), on=short(10 * GiB, 150 * MiB),
            settings=PolicySettings(max_step=512 * MiB))["vm1"]
    assert "100 MiB clean cache above its cache reserve and 100 MiB free" in d.reason
    assert moved(d) == -150 * MiB


def test_a_free_reserve_met_exactly_shares_by_shares() -> None:
    total = 2727 * MiB
    got = run(vm("vm1", free=256 * MiB), on=spare(total, 300 * MiB))
    assert got["vm1"].reason == ("host available 31 % > 20 %: give back 300 MiB, vm1 has 0 B "
                                 "free above its reserve, 1000 shares: gets 128 MiB "
                                 "(step limit 128 MiB)")


# --- how amounts are split ----------------------------------------------------------------------


def test_moves_are_whole_mib_rounded_toward_moving_less() -> None:
    d = run(vm(free=2 * GiB), on=short(10 * GiB, 100 * MiB + 512 * KiB))["vm1"]
    assert moved(d) == -100 * MiB and isinstance(d.target, int)


def test_a_small_need_goes_to_the_heaviest_vm_that_has_something() -> None:
    # 20 MiB with a 16 MiB deadband: one VM moves. Reclaiming, weight is 1/shares.
    settings = PolicySettings(vms={"few": VmPolicy(shares=500), "many": VmPolicy(shares=3000)})
    got = run(vm("many", free=2 * GiB), vm("few", free=300 * MiB), vm("empty", free=100 * MiB),
              on=short(10 * GiB, 20 * MiB), settings=settings)
    assert moved(got["few"]) == -20 * MiB
    assert got["many"].reason.endswith(", taken from other VMs first")
    # "empty" weighs as much as "few" but has nothing: it is not chosen over "many"
    got = run(vm("empty", free=100 * MiB), vm("many", free=2 * GiB),
              on=short(10 * GiB, 20 * MiB), settings=settings)
    assert moved(got["many"]) == -20 * MiB


def test_among_equal_weights_the_vm_with_most_room_moves() -> None:
    got = run(vm("less", free=300 * MiB), vm("more", free=400 * MiB),
              on=short(10 * GiB, 20 * MiB))
    assert moved(got["more"]) == -20 * MiB and got["less"].action is Action.HOLD


def test_what_a_capped_vm_cannot_give_the_others_give() -> None:
    # inverse shares: "small" (100 shares) would give ten times what "big" gives, but it has
    # only 50 MiB above its reserve; "big" gives the rest
    settings = PolicySettings(max_step=256 * MiB, vms={"small": VmPolicy(shares=100)})
    got = run(vm("big", free=2 * GiB), vm("small", free=306 * MiB),
              on=short(10 * GiB, 300 * MiB), settings=settings)
    assert (moved(got["big"]), moved(got["small"])) == (-250 * MiB, -50 * MiB)


def test_cache_is_split_in_inverse_proportion_to_shares() -> None:
    settings = PolicySettings(max_step=256 * MiB, vms={"b": VmPolicy(shares=3000)})
    got = run(vm("a", free=256 * MiB, cache=1 * GiB, hint=True),
              vm("b", free=256 * MiB, cache=1 * GiB, hint=True),
              on=short(10 * GiB, 200 * MiB), settings=settings)
    assert (moved(got["a"]), moved(got["b"])) == (-150 * MiB, -50 * MiB)


def test_a_target_with_two_decimals_is_shown_with_them() -> None:
    settings = PolicySettings(target_available=0.1525)
    total = 100 * GiB
    d = run(vm(), on=host(total, int(total * 0.152)), settings=settings)["vm1"]
    assert d.reason.startswith("host available 15.2 % < 15.25 %:")


def test_a_vm_exactly_at_its_free_reserve_shares_by_shares_with_the_others() -> None:
    # 100 MiB to give: not "below its reserve, served first", so it is split by shares
    got = run(vm("met", free=256 * MiB), vm("roomy", free=1 * GiB),
              on=spare(2727 * MiB, 100 * MiB))
    assert (moved(got["met"]), moved(got["roomy"])) == (50 * MiB, 50 * MiB)


@pytest.mark.parametrize("below", [1, 512 * KiB])
def test_less_than_a_mib_below_guest_ram_gets_nothing_but_is_not_at_it(below: int) -> None:
    got = run(vm("nearly", actual=4 * GiB - below), vm("other"), on=spare(2727 * MiB, 300 * MiB))
    assert got["nearly"].reason.endswith("give back 300 MiB, to other VMs first")
    assert (got["nearly"].action, got["nearly"].target) == (Action.HOLD, None)


def test_spare_memory_under_the_deadband_moves_nothing() -> None:
    d = run(vm(), on=spare(2727 * MiB, 8 * MiB))["vm1"]
    assert (d.action, d.target) == (Action.HOLD, None)
    assert d.reason == "host available 20.3 % > 20 %: give back 8 MiB, under the deadband 16 MiB"
