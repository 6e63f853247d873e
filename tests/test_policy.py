"""The automatic-ballooning policy: each rule of docs/policy.md, at its edge and one step past.

Sizes are whole MiB so the oracles are exact. The settings below are spelled out (not the
defaults) so each expected number follows from the documented rule and these values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from balloonctl.errors import UsageError
from balloonctl.host import HostMemory, Psi
from balloonctl.model import BalloonState, GuestStats, HintMode, HintState
from balloonctl.policy import (
    Action,
    Decision,
    PolicySettings,
    VmInput,
    VmPolicy,
    VmRates,
    decide,
    rates_between,
)
from balloonctl.units import GiB, MiB

NOW = 1_000_000
DOCS = (Path(__file__).resolve().parent.parent / "docs" / "policy.md").read_text()
S = PolicySettings(target_available=0.15, hysteresis=0.05, deadband=16 * MiB,
                   max_step=256 * MiB, emergency_free=64 * MiB, free_reserve=256 * MiB,
                   cache_reserve=128 * MiB, swap_in_rate=1 * MiB, fault_rate=100.0,
                   psi_threshold=10.0, stale_after=30.0)
TOTAL = 10 * GiB  # host: target available 1536 MiB, give back above 2048 MiB
TARGET, UPPER = 1536 * MiB, 2048 * MiB


def host(available: int, psi: float | None = None, total: int = TOTAL) -> HostMemory:
    return HostMemory(total=total, available=available, free=available, cached=0, anon=0,
                      swap_total=0, swap_free=0,
                      psi=None if psi is None else Psi(psi, 0, 0, 0, 0, 0))


def state(name: str = "vm1", *, ram: int = 4 * GiB, actual: int | None = None,
          free: int | None = 1 * GiB, cache: int = 0, available: int | None = None,
          hint: bool = False, mode: HintMode = HintMode.DEVICE, age: int = 1,
          **kw: Any) -> BalloonState:
    kw.setdefault("reachable", True)
    stats = GuestStats(last_update=NOW - age, free_memory=free, disk_caches=cache,
                       available_memory=available if available is not None
                       else None if free is None else free + cache)
    return BalloonState(name=name, qmp=f"/{name}.qmp", guest_ram=ram,
                        actual=ram if actual is None else actual, stats=stats,
                        hint=HintState(mode=mode, enabled=hint), taken_at=float(NOW), **kw)


def run(*vms: BalloonState | VmInput, available: int = UPPER - MiB, psi: float | None = None,
        settings: PolicySettings = S, total: int = TOTAL) -> dict[str, Decision]:
    inputs = [v if isinstance(v, VmInput) else VmInput(v) for v in vms]
    out = decide(inputs, host(available, psi, total), settings)
    assert [d.name for d in out] == [v.state.name for v in inputs]
    return {d.name: d for d in out}


def taken(d: Decision) -> int:
    assert d.target is not None and d.current is not None, d
    return d.current - d.target


def short_by(n: int) -> int:
    return TARGET - n


# ---- left alone -------------------------------------------------------------------------

LEAVE_CASES = {
    "busy": (state(reachable=False, error_kind="SocketBusy", error="busy"), "socket busy"),
    "unreachable": (state(reachable=False, error="connection refused"), "unreachable"),
    "no device": (state(has_device=False), "no balloon device"),
    "no driver": (state().with_changes(stats=GuestStats()), "no stats"),
    "stale by polling": (state(polling_interval=2, age=9), "stale"),
    "stale by age": (state(age=31), "stale"),
    "missing free": (state(free=None), "missing free memory"),
    "foreign": (VmInput(state(), owned=False), "another writer"),
    "qga down": (VmInput(state(hint=True, mode=HintMode.AGENT), qga_reachable=False), "qga"),
}


@pytest.mark.parametrize("case", list(LEAVE_CASES))
def test_vms_that_cannot_be_judged_are_left_alone_and_say_why(case: str) -> None:
    vm, word = LEAVE_CASES[case]
    d = run(vm, available=short_by(300 * MiB))["vm1"]  # the host is short: it would shrink
    assert d.action is Action.LEAVE and d.target is None
    assert d.reason.startswith("left alone") and word in d.reason
    assert "stale" in case or f"    {d.reason}\n" in DOCS  # docs/policy.md lists it as is


@pytest.mark.parametrize("vm", [
    state(age=30),  # stale_after is 30 s: exactly 30 s old is still fresh
    state(polling_interval=2, age=8),  # stale past 3 intervals + 2 s
    VmInput(state(hint=True, mode=HintMode.DEVICE), qga_reachable=False),  # no qga needed
    VmInput(state(hint=False, mode=HintMode.AGENT), qga_reachable=False),  # hint off
    VmInput(state(hint=True, mode=HintMode.AGENT), qga_reachable=True),
], ids=["age at edge", "polling at edge", "device hint", "hint off", "qga up"])
def test_one_step_inside_each_leave_rule_the_vm_is_managed(vm: BalloonState | VmInput) -> None:
    d = run(vm, available=short_by(300 * MiB))["vm1"]
    assert d.action is Action.SHRINK and taken(d) == 256 * MiB  # one step of the 300 MiB


# ---- bounds -----------------------------------------------------------------------------

def test_never_below_the_floor() -> None:
    # 2 GiB free, 100 MiB above a 1 GiB floor: the host wants 300 MiB, the VM gives 100
    near = state(ram=2 * GiB, actual=1 * GiB + 100 * MiB, free=1 * GiB, floor=1 * GiB)
    d = run(near, available=short_by(300 * MiB))["vm1"]
    assert d.target == 1 * GiB
    at = run(state(ram=2 * GiB, actual=1 * GiB, free=1 * GiB, floor=1 * GiB),
             available=short_by(300 * MiB))["vm1"]
    assert at.action is Action.HOLD and "at its floor 1 GiB" in at.reason


def test_per_vm_minimum_overrides_the_state_floor() -> None:
    vm = VmInput(state(actual=3 * GiB, free=2 * GiB, floor=512 * MiB),
                 policy=VmPolicy(minimum=3 * GiB - 100 * MiB))
    assert run(vm, available=short_by(300 * MiB))["vm1"].target == 3 * GiB - 100 * MiB


def test_below_the_floor_is_raised_to_it_at_once() -> None:
    d = run(state(actual=1 * GiB - 600 * MiB, free=200 * MiB, floor=1 * GiB))["vm1"]
    assert d.action is Action.GROW and d.target == 1 * GiB  # 600 MiB: more than a step
    assert "below its floor" in d.reason


def test_never_above_the_maximum_or_guest_ram() -> None:
    plenty = 8 * GiB  # far above the give-back line
    d = run(state(actual=3 * GiB, maximum=3 * GiB + 100 * MiB), available=plenty)["vm1"]
    assert d.target == 3 * GiB + 100 * MiB  # one step would be 256 MiB
    d = run(state(ram=2 * GiB, actual=2 * GiB - 100 * MiB), available=plenty)["vm1"]
    assert d.target == 2 * GiB
    d = run(state(actual=3 * GiB), VmInput(state("vm2", actual=2 * GiB),
                                           policy=VmPolicy(maximum=2 * GiB)),
            available=plenty)
    assert d["vm2"].action is Action.HOLD and "already at its maximum 2 GiB" in d["vm2"].reason
    above = run(VmInput(state(actual=4 * GiB), policy=VmPolicy(maximum=2 * GiB)))["vm1"]
    assert above.action is Action.SHRINK and above.target == 2 * GiB  # at once
    assert "above its maximum" in above.reason


# ---- emergency --------------------------------------------------------------------------

def test_a_guest_below_the_emergency_level_is_deflated_at_once() -> None:
    # steady host, step 256 MiB: the emergency ignores both and fills up to the reserve
    d = run(state(actual=2 * GiB, free=20 * MiB, available=63 * MiB))["vm1"]
    assert d.action is Action.GROW and taken(d) == -(256 * MiB - 63 * MiB)
    assert "emergency" in d.reason and "at once" in d.reason
    edge = run(state(actual=2 * GiB, free=20 * MiB, available=64 * MiB))["vm1"]
    assert edge.action is Action.HOLD  # at the level is not below it


def test_emergency_ignores_a_short_host_and_others_pay() -> None:
    d = run(state(actual=2 * GiB, free=10 * MiB, available=10 * MiB),
            state("vm2", free=2 * GiB), available=short_by(0))
    assert d["vm1"].target == 2 * GiB + 246 * MiB
    assert taken(d["vm2"]) == 246 * MiB  # the host was exactly at target before


def test_emergency_with_a_tiny_gap_still_moves_despite_the_deadband() -> None:
    s = PolicySettings(deadband=200 * MiB, max_step=256 * MiB, emergency_free=64 * MiB,
                       free_reserve=80 * MiB)
    d = run(state(actual=2 * GiB, free=63 * MiB), settings=s)["vm1"]
    assert d.target == 2 * GiB + 17 * MiB  # under the deadband, over no step: moves anyway


# ---- thrashing --------------------------------------------------------------------------

@pytest.mark.parametrize("rates", [VmRates(swap_in=1 * MiB + 1), VmRates(major_faults=100.5)])
def test_a_thrashing_guest_is_never_shrunk_and_grows_first(rates: VmRates) -> None:
    d = run(VmInput(state(actual=2 * GiB, free=2 * GiB), rates=rates),
            state("vm2", free=2 * GiB), available=short_by(100 * MiB))
    assert d["vm1"].action is Action.GROW and taken(d["vm1"]) == -256 * MiB
    assert "never shrunk" in d["vm1"].reason
    assert taken(d["vm2"]) == 256 * MiB  # the step limit: 100 MiB short + 256 MiB given


@pytest.mark.parametrize("rates", [VmRates(swap_in=1 * MiB), VmRates(major_faults=100.0)])
def test_at_the_threshold_a_guest_is_not_thrashing(rates: VmRates) -> None:
    d = run(VmInput(state(actual=2 * GiB, free=2 * GiB), rates=rates),
            available=short_by(100 * MiB))["vm1"]
    assert d.action is Action.SHRINK and taken(d) == 100 * MiB


def test_a_thrashing_guest_at_guest_ram_holds() -> None:
    d = run(VmInput(state(free=2 * GiB), rates=VmRates(swap_in=10 * MiB)),
            available=short_by(300 * MiB))["vm1"]
    assert d.action is Action.HOLD and "never shrunk" in d.reason


# ---- shares, deadband, step -------------------------------------------------------------

def test_reclaim_is_taken_in_inverse_proportion_to_shares() -> None:
    d = run(VmInput(state("a", free=2 * GiB), policy=VmPolicy(shares=1000)),
            VmInput(state("b", free=2 * GiB), policy=VmPolicy(shares=3000)),
            available=short_by(200 * MiB))
    assert (taken(d["a"]), taken(d["b"])) == (150 * MiB, 50 * MiB)


def test_a_capped_donor_leaves_its_share_to_the_others() -> None:
    d = run(state("a", free=256 * MiB + 40 * MiB), state("b", free=2 * GiB),
            available=short_by(200 * MiB))
    assert (taken(d["a"]), taken(d["b"])) == (40 * MiB, 160 * MiB)


def test_memory_given_back_in_proportion_to_shares() -> None:
    d = run(VmInput(state("a", actual=2 * GiB, free=1 * GiB), policy=VmPolicy(shares=1000)),
            VmInput(state("b", actual=2 * GiB, free=1 * GiB), policy=VmPolicy(shares=3000)),
            available=UPPER + 200 * MiB)
    assert (taken(d["a"]), taken(d["b"])) == (-50 * MiB, -150 * MiB)


def test_deadband_skips_smaller_changes() -> None:
    at = run(state(free=2 * GiB), available=short_by(16 * MiB))["vm1"]
    assert at.action is Action.SHRINK and taken(at) == 16 * MiB
    under = run(state(free=2 * GiB), available=short_by(15 * MiB))["vm1"]
    assert under.action is Action.HOLD and "deadband" in under.reason


def test_a_small_need_is_not_spread_below_the_deadband() -> None:
    # 40 MiB over 10 equal VMs would be 4 MiB each, all under the deadband: two VMs give it
    vms = [state(f"v{i}", free=2 * GiB) for i in range(10)]
    d = run(*vms, available=short_by(40 * MiB))
    moved = sorted(taken(x) for x in d.values() if x.target is not None)
    assert moved == [20 * MiB, 20 * MiB]


def test_largest_step_per_cycle() -> None:
    d = run(state(free=3 * GiB), available=short_by(257 * MiB))["vm1"]
    assert taken(d) == 256 * MiB and "step limit 256 MiB" in d.reason
    d = run(state(free=3 * GiB), available=short_by(256 * MiB))["vm1"]
    assert taken(d) == 256 * MiB


# ---- host pressure ----------------------------------------------------------------------

def test_host_psi_above_the_threshold_is_pressure_even_with_memory_available() -> None:
    calm = run(state(free=2 * GiB), psi=10.0)["vm1"]
    assert calm.action is Action.HOLD and "within" in calm.reason
    d = run(state(free=2 * GiB), psi=10.1)["vm1"]
    assert d.action is Action.SHRINK and taken(d) == 256 * MiB
    assert d.reason.startswith("host PSI some avg10 10.1 % > 10 %")


def test_host_target_edges() -> None:
    assert run(state(free=2 * GiB), available=TARGET)["vm1"].action is Action.HOLD
    below = run(state(free=2 * GiB), available=TARGET - 16 * MiB)["vm1"]
    assert below.action is Action.SHRINK and taken(below) == 16 * MiB
    assert run(state(actual=2 * GiB), available=UPPER)["vm1"].action is Action.HOLD
    above = run(state(actual=2 * GiB), available=UPPER + 16 * MiB)["vm1"]
    assert above.action is Action.GROW and taken(above) == -16 * MiB


def test_the_reason_names_the_host_the_amount_and_the_vm() -> None:
    # 5000 MiB of host RAM, 450 MiB (9 %) available: 750 MiB (15 %) is 300 MiB away
    wide = PolicySettings(max_step=512 * MiB)
    d = run(state("vm3", free=256 * MiB + 410 * MiB), available=450 * MiB, total=5000 * MiB,
            settings=wide)["vm3"]
    assert d.reason == (
        "host available 9 % < 15 %: reclaim 300 MiB, vm3 has 410 MiB free above its "
        "reserve (hint off: cache counts as used): takes 300 MiB")
    assert taken(d) == 300 * MiB
    assert f"    {d.reason}\n" in DOCS


# ---- cache-aware ------------------------------------------------------------------------

def test_hint_on_counts_clean_cache_above_its_reserve_as_reclaimable() -> None:
    # 300 MiB free (44 above the 256 MiB reserve), 1 GiB cache (896 above the 128 MiB one)
    on = run(state(free=300 * MiB, cache=1 * GiB, hint=True), available=short_by(200 * MiB))
    assert taken(on["vm1"]) == 200 * MiB
    assert "896 MiB clean cache above its cache reserve" in on["vm1"].reason
    assert "hint on: cache first" in on["vm1"].reason
    off = run(state(free=300 * MiB, cache=1 * GiB, hint=False), available=short_by(200 * MiB))
    assert taken(off["vm1"]) == 44 * MiB
    assert "hint off: cache counts as used" in off["vm1"].reason


def test_cache_is_taken_before_free_memory() -> None:
    d = run(state("cached", free=256 * MiB, cache=128 * MiB + 100 * MiB, hint=True),
            state("free", free=2 * GiB), available=short_by(100 * MiB))
    assert taken(d["cached"]) == 100 * MiB and d["free"].action is Action.HOLD
    d = run(state("cached", free=256 * MiB, cache=128 * MiB + 100 * MiB, hint=True),
            state("free", free=2 * GiB), available=short_by(150 * MiB))
    assert (taken(d["cached"]), taken(d["free"])) == (100 * MiB, 50 * MiB)


def test_a_hint_that_is_not_honoured_counts_cache_as_used() -> None:
    d = run(state(free=300 * MiB, cache=1 * GiB, hint=True, mode=HintMode.UNSUPPORTED),
            available=short_by(200 * MiB))["vm1"]
    assert taken(d) == 44 * MiB and "not honoured" in d.reason


# ---- giving back ------------------------------------------------------------------------

def test_spare_memory_goes_back_step_by_step_least_free_first() -> None:
    d = run(state("low", actual=2 * GiB, free=56 * MiB, available=56 * MiB + 10 * MiB),
            state("lower", actual=2 * GiB, free=100 * MiB),
            state("fine", actual=2 * GiB, free=1 * GiB),
            available=UPPER + 300 * MiB)
    # "low" is 200 MiB under its reserve (its 66 MiB available is above the emergency level)
    assert taken(d["low"]) == -256 * MiB and "below its free reserve" in d["low"].reason
    assert taken(d["lower"]) == -44 * MiB
    assert d["fine"].action is Action.HOLD


# ---- inputs and settings ----------------------------------------------------------------

def test_rates_between_two_snapshots() -> None:
    a = state().with_changes(stats=GuestStats(last_update=100, swap_in=0, major_faults=50))
    b = state().with_changes(stats=GuestStats(last_update=110, swap_in=20 * MiB,
                                              major_faults=1050))
    assert rates_between(a, b) == VmRates(swap_in=2 * MiB, major_faults=100.0)
    reboot = b.with_changes(stats=GuestStats(last_update=120, swap_in=0, major_faults=3))
    assert rates_between(b, reboot) == VmRates(None, None)
    assert rates_between(b, b) == VmRates()  # no report in between: unknown, not zero
    # a different sample stamped with the same second: one second apart (a lower bound)
    same_second = b.with_changes(stats=GuestStats(last_update=110, swap_in=23 * MiB,
                                                  major_faults=1051))
    assert rates_between(b, same_second) == VmRates(swap_in=3 * MiB, major_faults=1.0)
    assert rates_between(state().with_changes(stats=None), b) == VmRates()


@pytest.mark.parametrize(("change", "words"), [
    ({"target_available": 0.0}, "target_available: must be greater than zero"),
    ({"target_available": 1.0}, "target_available: must be below 1"),
    ({"target_available": float("nan")}, "target_available: must be a finite number"),
    ({"target_available": "15%"}, "target_available: expected a number"),
    ({"hysteresis": -0.01}, "hysteresis"),
    ({"target_available": 0.6, "hysteresis": 0.4}, "hysteresis: target_available +"),
    ({"deadband": -1}, "deadband: must be zero or more"),
    ({"max_step": 0}, "max_step: must be greater than zero"),
    ({"deadband": 300 * MiB, "max_step": 256 * MiB}, "deadband (300 MiB) is above max_step"),
    ({"cycle": float("inf")}, "cycle: must be a finite number"),
    ({"stale_after": 0}, "stale_after: must be greater than zero"),
    ({"emergency_free": 256 * MiB, "free_reserve": 256 * MiB}, "must be below free_reserve"),
    ({"cache_reserve": -1}, "cache_reserve"),
    ({"swap_in_rate": 1.5}, "swap_in_rate: expected an integer"),
    ({"fault_rate": -1.0}, "fault_rate"),
    ({"psi_threshold": 100.0}, "psi_threshold: must be below 100"),
    ({"shares": True}, "shares: expected an integer"),
    ({"vms": {"web": VmPolicy(minimum=2 * GiB, maximum=1 * GiB)}}, "vm.web: minimum (2 GiB)"),
    ({"vms": {"web": VmPolicy(free_reserve=32 * MiB)}}, "vm.web.free_reserve (32 MiB)"),
    ({"vms": {"web": VmPolicy(shares=0)}}, "vm.web.shares"),
])
def test_every_wrong_setting_is_a_clear_error(change: dict[str, Any], words: str) -> None:
    with pytest.raises(UsageError) as err:
        PolicySettings(**change)
    assert words in str(err.value)


def test_edges_of_the_settings_are_accepted() -> None:
    PolicySettings(deadband=0, cache_reserve=0, swap_in_rate=0, fault_rate=0.0,
                   psi_threshold=0.0, hysteresis=0.0)
    PolicySettings(deadband=256 * MiB, max_step=256 * MiB)
    PolicySettings(emergency_free=255 * MiB, free_reserve=256 * MiB)
