"""The dashboard's rules without a screen: rows, sorting, filtering, targets, bars."""

from __future__ import annotations

import dataclasses

import pytest
from rich.text import Text

from balloonctl.errors import SizeError
from balloonctl.model import GuestStats
from balloonctl.units import GiB, MiB, SizeKind, TargetSpec
from tui.fleetview import FleetView
from tui.history import Ring
from tui.targets import plan_targets, plan_text
from tui.testing import FIXED_TIME, sample_states
from tui.widgets.fleet_table import COLUMNS, row_cells
from tui.widgets.memory_bar import memory_bar, segments


def test_swap_rates_are_bytes_per_second_between_the_guests_reports() -> None:
    view = FleetView(["vm1"])
    first = sample_states(1)[0]
    assert first.stats is not None
    reported = first.stats.last_update
    view.apply([first])
    # Polled every second, but the guest reports every 3 s: the rate is over its reports.
    later = first.with_changes(
        taken_at=FIXED_TIME + 1,
        stats=GuestStats(last_update=reported + 3, swap_in=12 * MiB, swap_out=36 * MiB),
    )
    view.apply([later])
    row = view.rows["vm1"]
    assert (row.swap_in_rate, row.swap_out_rate) == (4 * MiB, 12 * MiB)
    # The next poll sees the same report: the rate stays, it does not drop to 0.
    view.apply([later.with_changes(taken_at=FIXED_TIME + 2)])
    row = view.rows["vm1"]
    assert (row.swap_in_rate, row.swap_out_rate) == (4 * MiB, 12 * MiB)
    cells = dict(zip(["sel", *(c.key for c in COLUMNS)], row_cells(row, False), strict=True))
    swap = cells["swap"]
    assert isinstance(swap, Text) and swap.plain == "4.00M/12.0M"
    assert len(swap.plain) <= next(c.width for c in COLUMNS if c.key == "swap")


def test_sort_cycles_and_puts_unknown_values_last() -> None:
    view = FleetView([s.name for s in sample_states(6)])
    view.apply(sample_states(6))
    assert [r.name for r in view.visible()] == [f"vm{i}" for i in range(1, 7)]
    assert view.cycle_sort() == "state"
    assert view.visible()[0].name == "vm5"  # unreachable first: problems on top
    view.sort_key = "free"
    names = [r.name for r in view.visible()]
    assert names[-2:] == ["vm3", "vm5"]  # no stats: at the end
    view.reverse = True
    assert view.visible()[0].name == "vm6"


def test_filter_matches_name_state_and_reason() -> None:
    view = FleetView()
    view.apply(sample_states(6))
    view.filter_text = "unreach"
    assert [r.name for r in view.visible()] == ["vm5"]
    view.filter_text = "refused"
    assert [r.name for r in view.visible()] == ["vm5"]
    view.filter_text = "VM2"
    assert [r.name for r in view.visible()] == ["vm2"]


def test_actions_apply_to_the_selection_or_the_cursor() -> None:
    view = FleetView([f"vm{i}" for i in range(1, 4)])
    assert view.targets("vm2") == ["vm2"]
    view.toggle_selected("vm3")
    view.toggle_selected("vm1")
    assert view.targets("vm2") == ["vm1", "vm3"]
    view.toggle_selected("vm1")
    assert view.targets("vm2") == ["vm3"]


def test_totals_count_only_reachable_vms() -> None:
    view = FleetView()
    view.apply(sample_states(6))
    totals = view.totals()
    assert (totals.vms, totals.reachable) == (6, 5)
    assert totals.guest_ram == 5 * 2 * GiB


def test_plan_refuses_unsafe_targets_with_reasons() -> None:
    states = sample_states(6)
    plan = plan_text(states[:2], "3G")
    assert plan.targets == {} and not plan.ok
    assert "above guest RAM" in plan.refused["vm1"]
    plan = plan_text(states[:1], "200M")
    assert plan.refused["vm1"].endswith("below the safe floor 256 MiB (tick force to go lower)")
    step = plan_targets(states[:1], TargetSpec(SizeKind.RELATIVE, -1600 * MiB, "-1600M"))
    assert "(set it with t and tick force to go lower)" in step.refused["vm1"]
    plan = plan_text(states[:1], "200M", force=True)
    assert plan.ok and plan.targets == {"vm1": 200 * MiB}
    plan = plan_text([states[4]], "1G")  # vm5: unreachable
    assert "not reachable" in plan.refused["vm5"]
    with pytest.raises(SizeError):
        plan_text(states[:1], "1.5 gallons")


def test_plan_resolves_relative_and_percent_per_vm() -> None:
    vm1, vm2 = sample_states(2)
    plan = plan_targets([vm1, vm2], TargetSpec(SizeKind.RELATIVE, -128 * MiB, "-128M"))
    assert vm1.target is not None and vm2.target is not None
    assert plan.targets == {"vm1": vm1.target - 128 * MiB, "vm2": vm2.target - 128 * MiB}
    assert plan_text([vm1], "50%").targets == {"vm1": GiB}


def test_memory_bar_is_exactly_its_width_and_proportional() -> None:
    for state in sample_states(6):
        assert len(memory_bar(state, 24)) == 24
    vm1 = sample_states(1)[0]
    parts = segments(vm1)
    assert parts is not None and sum(parts.values()) == vm1.guest_ram
    assert parts["ballooned"] == 256 * MiB


def test_ring_keeps_the_newest_values_in_fixed_memory() -> None:
    ring = Ring(3)
    for v in range(5):
        ring.append(float(v))
    assert ring.values() == [2.0, 3.0, 4.0]
    assert len(ring) == 3


def test_stats_older_than_the_balloons_size_are_marked_and_not_counted_beyond_it() -> None:
    vm1 = sample_states(1)[0]  # actual 1.75G; polling off, the guest reported once
    stats = GuestStats(last_update=int(FIXED_TIME) - 5, free_memory=1600 * MiB,
                       disk_caches=100 * MiB, available_memory=1700 * MiB)
    first = vm1.with_changes(stats=stats, polling_interval=0)
    view = FleetView(["vm1"])
    view.apply([first])
    assert not view.rows["vm1"].stats_outdated
    # A target of 1G landed; the guest has not reported since.
    later = first.with_changes(actual=GiB, target=GiB, taken_at=FIXED_TIME + 3)
    view.apply([later])
    row = view.rows["vm1"]
    assert row.stats_outdated
    totals = view.totals()
    assert (totals.free, totals.cached) == (GiB, 0)
    parts = segments(row.state)
    assert parts is not None and parts["free"] == GiB and parts["used"] == 0
    cells = dict(zip(["sel", *(c.key for c in COLUMNS)], row_cells(row, False), strict=True))
    free = cells["free"]
    assert isinstance(free, Text) and free.plain == "1.56G" and "dim" in str(free.style)
    state = cells["state"]
    # polling is off: the stats are frozen, so the VM is stale as well
    assert isinstance(state, Text) and state.plain == "stale, stats outdated"
    # The guest reports again: current numbers, no mark.
    fresh = dataclasses.replace(stats, last_update=int(FIXED_TIME) + 4, free_memory=300 * MiB)
    view.apply([later.with_changes(stats=fresh, taken_at=FIXED_TIME + 5)])
    assert not view.rows["vm1"].stats_outdated


def test_stats_claiming_more_than_actual_are_outdated_from_the_first_snapshot() -> None:
    vm1 = sample_states(1)[0].with_changes(actual=GiB)
    assert vm1.stats is not None
    view = FleetView(["vm1"])
    view.apply([vm1.with_changes(stats=dataclasses.replace(vm1.stats, free_memory=GiB))])
    assert view.rows["vm1"].stats_outdated


def test_the_detail_pane_says_which_method_the_hint_uses_and_why() -> None:
    from balloonctl.model import HintMethod, HintMode, HintState
    from tui.widgets.detail import describe

    state = sample_states(1)[0].with_changes(hint=HintState(
        HintMode.AGENT, True, "memory.reclaim missing (kernel < 5.19)", None, HintMethod.DROP))
    text = describe(state).plain
    assert "cache-first hint on (agent), method drop: memory.reclaim missing (kernel < 5.19)" \
        in text
    unknown = sample_states(1)[0].with_changes(hint=HintState(HintMode.AGENT, False, "x"))
    assert "method" not in describe(unknown).plain


def test_rows_of_several_hosts_sort_filter_and_total_by_host() -> None:
    states = [s.with_changes(name=f"{host}/{s.name}")
              for host in ("hv2", "hv1") for s in sample_states(2)]
    view = FleetView([s.name for s in states])
    view.apply(states)
    assert view.multi_host
    row = view.rows["hv2/vm1"]
    assert (row.host, row.vm_name) == ("hv2", "vm1")
    view.sort_by("host")
    assert [r.name for r in view.visible()] == ["hv1/vm1", "hv1/vm2", "hv2/vm1", "hv2/vm2"]
    view.sort_by("name")  # the VM's own name, across hosts
    assert [r.name for r in view.visible()] == ["hv1/vm1", "hv2/vm1", "hv1/vm2", "hv2/vm2"]
    view.filter_text = "hv1"
    assert [r.name for r in view.visible()] == ["hv1/vm1", "hv1/vm2"]
    hv1, hv2 = view.host_totals(["hv1", "hv2"])
    mine = [s for s in states if s.name.startswith("hv1/")]
    assert (hv1.host, hv1.vms, hv1.guest_ram, hv1.actual) == (
        "hv1", 2, sum(s.guest_ram or 0 for s in mine), sum(s.actual or 0 for s in mine))
    assert hv2.vms == 2 and view.host_totals(["hv9"])[0].vms == 0


def test_one_host_has_no_host_sort_in_the_cycle() -> None:
    view = FleetView()
    view.apply(sample_states(2))
    assert not view.multi_host
    seen = {view.cycle_sort() for _ in range(20)}
    assert "host" not in seen and "name" in seen
