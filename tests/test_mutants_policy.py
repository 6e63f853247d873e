"""The policy's inputs, settings and rules at their edges: the cases `./dev mutate` found
untested.

Oracles: docs/policy.md (the rules, the settings table, ``Decision.to_json()``'s keys, "a
rate is unknown when the guest did not report between the two snapshots or a counter went
back") and the docstrings of ``rates_between``, ``VmPolicy`` and ``policy_for``.
"""

from __future__ import annotations

import pytest

from balloonctl.errors import UsageError
from balloonctl.model import BalloonState, GuestStats, VmRef
from balloonctl.policy import (
    Action,
    Decision,
    PolicySettings,
    VmPolicy,
    VmRates,
    policy_for,
    rates_between,
)
from balloonctl.units import GiB, MiB


def snap(last_update: int, swap_in: int | None = 0, faults: int | None = 0) -> BalloonState:
    return BalloonState(name="vm1", qmp="/vm1.qmp", reachable=True, guest_ram=4 * GiB,
                        actual=4 * GiB, stats=GuestStats(last_update=last_update,
                                                         swap_in=swap_in, major_faults=faults))


# --- rates_between ---------------------------------------------------------------------------


def test_no_rate_from_a_previous_snapshot_without_a_report() -> None:
    # counters but no report time yet: the interval is unknown, so is the rate
    assert rates_between(snap(0, 5 * MiB, 10), snap(100, 9 * MiB, 20)) == VmRates()
    assert rates_between(snap(100, 5 * MiB, 10), snap(0, 9 * MiB, 20)) == VmRates()


def test_reports_one_second_apart_give_a_rate() -> None:
    assert rates_between(snap(100, 0, 0), snap(101, 3 * MiB, 7)) == VmRates(3 * MiB, 7.0)


def test_a_counter_missing_on_either_side_is_unknown_alone() -> None:
    assert rates_between(snap(100, None, 0), snap(110, 5 * MiB, 50)) == VmRates(None, 5.0)
    assert rates_between(snap(100, 0, 0), snap(110, None, 50)) == VmRates(None, 5.0)
    assert rates_between(snap(100, 0, None), snap(110, 10 * MiB, None)) == VmRates(MiB, None)


def test_an_unchanged_counter_is_a_rate_of_zero_not_unknown() -> None:
    assert rates_between(snap(100, 4 * MiB, 9), snap(110, 4 * MiB, 9)) == VmRates(0.0, 0.0)


# --- Decision ----------------------------------------------------------------------------------


def test_decision_json_has_the_documented_keys() -> None:
    d = Decision("vm1", Action.SHRINK, 3 * GiB, 4 * GiB, "host short")
    assert d.to_json() == {"name": "vm1", "action": "shrink", "current": 4 * GiB,
                           "target": 3 * GiB, "reason": "host short"}
    assert Decision("vm2", Action.LEAVE, None, None, "why").to_json() == {
        "name": "vm2", "action": "leave", "current": None, "target": None, "reason": "why"}


# --- VmPolicy: the per-VM settings ("size above 0", cache_reserve "0 or more") ----------------


def settings_with(vm: VmPolicy) -> PolicySettings:
    return PolicySettings(vms={"db": vm})


@pytest.mark.parametrize("vm", [
    VmPolicy(minimum=1, maximum=1, shares=1, free_reserve=64 * MiB + 1, cache_reserve=0),
    VmPolicy(minimum=2 * GiB, maximum=2 * GiB),  # min equal to max: not above it
    VmPolicy(minimum=2 * GiB),                    # either bound alone
    VmPolicy(maximum=2 * GiB),
    VmPolicy(cache_reserve=0),
])
def test_per_vm_values_at_their_lowest(vm: VmPolicy) -> None:
    assert settings_with(vm).vms["db"] == vm


@pytest.mark.parametrize(("vm", "words"), [
    (VmPolicy(minimum=0), "vm.db.minimum: must be greater than zero, got 0"),
    (VmPolicy(maximum=0), "vm.db.maximum: must be greater than zero, got 0"),
    (VmPolicy(shares=0), "vm.db.shares: must be greater than zero, got 0"),
    (VmPolicy(minimum=1.5), "vm.db.minimum: expected an integer, got 1.5"),  # type: ignore[arg-type]
    (VmPolicy(shares=2.5), "vm.db.shares: expected an integer, got 2.5"),  # type: ignore[arg-type]
    (VmPolicy(cache_reserve=-1), "vm.db.cache_reserve: must be zero or more, got -1"),
    (VmPolicy(cache_reserve=0.5), "vm.db.cache_reserve: expected an integer, got 0.5"),  # type: ignore[arg-type]
    (VmPolicy(minimum=3 * GiB, maximum=2 * GiB),
     "vm.db: minimum (3 GiB) is above maximum (2 GiB)"),
])
def test_wrong_per_vm_values_name_the_setting(vm: VmPolicy, words: str) -> None:
    with pytest.raises(UsageError) as info:
        settings_with(vm)
    assert str(info.value) == words


# --- policy_for ------------------------------------------------------------------------------


def test_policy_for_takes_the_inventory_limits_and_the_configured_reserves() -> None:
    settings = PolicySettings(vms={"db": VmPolicy(free_reserve=512 * MiB,
                                                  cache_reserve=64 * MiB)})
    ref = VmRef("db", "/db.qmp", minimum=1 * GiB, maximum=3 * GiB, shares=3000)
    assert policy_for(ref, settings) == VmPolicy(minimum=1 * GiB, maximum=3 * GiB,
                                                 shares=3000, free_reserve=512 * MiB,
                                                 cache_reserve=64 * MiB)


def test_policy_for_a_vm_without_a_table_of_its_own() -> None:
    ref = VmRef("web", "/web.qmp", maximum=2 * GiB)
    assert policy_for(ref, PolicySettings()) == VmPolicy(maximum=2 * GiB, shares=1000)


def test_policy_for_falls_back_to_the_settings_where_the_inventory_says_nothing() -> None:
    # VmInput's policy None means settings.vms[name]: limits put there by a library caller
    # apply when the inventory has none (a VmRef always has shares: the table's win)
    settings = PolicySettings(vms={"db": VmPolicy(minimum=1 * GiB, maximum=3 * GiB,
                                                  shares=3000)})
    assert policy_for(VmRef("db", "/db.qmp"), settings) == VmPolicy(
        minimum=1 * GiB, maximum=3 * GiB, shares=3000)
    inventory = VmRef("db", "/db.qmp", minimum=2 * GiB, maximum=2 * GiB)
    assert policy_for(inventory, settings) == VmPolicy(minimum=2 * GiB, maximum=2 * GiB,
                                                       shares=3000)


# --- PolicySettings: each wrong value named, with what is wrong (docs/policy.md's table) ---------


@pytest.mark.parametrize(("change", "words"), [
    ({"deadband": 1.5}, "deadband: expected an integer, got 1.5"),
    ({"cache_reserve": 0.5}, "cache_reserve: expected an integer, got 0.5"),
    ({"cache_reserve": -1}, "cache_reserve: must be zero or more, got -1"),
    ({"hysteresis": 1.0}, "hysteresis: must be below 1, got 1.0"),
    ({"hysteresis": 1.5}, "hysteresis: must be below 1, got 1.5"),
    ({"deadband": 300 * MiB, "max_step": 256 * MiB},
     "deadband (300 MiB) is above max_step (256 MiB): nothing would ever move"),
    ({"vms": {"db": VmPolicy(free_reserve=64 * MiB)}},
     "vm.db.free_reserve (64 MiB) must be above emergency_free (64 MiB)"),
    ({"free_reserve": 64 * MiB, "vms": {"db": VmPolicy()}},
     "free_reserve (64 MiB) must be above emergency_free (64 MiB)"),
])
def test_wrong_settings_name_the_setting_and_the_problem(change: dict[str, object],
                                                        words: str) -> None:
    with pytest.raises(UsageError) as info:
        PolicySettings(**change)  # type: ignore[arg-type]
    assert str(info.value) == words


def test_settings_at_their_lowest() -> None:
    lowest = PolicySettings(deadband=0, cache_reserve=0, hysteresis=0, swap_in_rate=0,
                            fault_rate=0, psi_threshold=0, cycle=0.001, stale_after=1,
                            vms={"db": VmPolicy(free_reserve=64 * MiB + 1)})
    assert lowest.deadband == 0 and lowest.vms["db"].free_reserve == 64 * MiB + 1


def test_the_policy_package_hands_out_each_export_from_its_home_and_nothing_else() -> None:
    # docstring: the package exports lazily (``__all__``); an unknown name is Python's
    # usual AttributeError for a module
    import balloonctl.policy as policy
    from balloonctl.policy import inputs, rules, settings

    assert policy.decide is rules.decide
    assert policy.PolicySettings is settings.PolicySettings
    assert policy.rates_between is inputs.rates_between
    assert policy.VmInput is inputs.VmInput
    with pytest.raises(AttributeError) as info:
        policy.nothing_here  # noqa: B018
    assert str(info.value) == "module 'balloonctl.policy' has no attribute 'nothing_here'"
