"""The wave's limits at their edge and one step past: the cases `./dev mutate` found untested.

Oracles: ``check_wave``'s docstring (bounds in order; at least two steps per period, so a
step of exactly half the period is the longest allowed) and ``wave_schedule``'s (a pair
every ``step`` seconds, ending on ``maximum`` after ``cycles`` periods; a step that is not
positive is refused), ``triangle_wave``'s (starts at ``maximum``), ``clamp_step``'s (no
limit when ``max_step`` is not positive) and ``share_targets``' (shares, each VM within
``[floor, min(maximum, guest RAM)]``, the floor being the inventory's minimum, else the
state's, else the default; unreachable, driverless or unknown-size VMs get no target).
"""

from __future__ import annotations

import pytest

from balloonctl.errors import UsageError
from balloonctl.model import BalloonState, GuestStats, VmRef
from balloonctl.units import GiB, MiB
from balloonctl.wave import (
    ShareTarget,
    check_wave,
    clamp_step,
    share_targets,
    triangle_wave,
    wave_schedule,
)

LOW, HIGH = 1 * GiB, 2 * GiB


def test_the_bounds_must_be_in_order_and_the_error_names_both() -> None:
    check_wave(minimum=HIGH - MiB, maximum=HIGH, period=60, step=1)  # one MiB below: fine
    for low in (HIGH, HIGH + GiB):  # equal, then above
        with pytest.raises(UsageError) as info:
            check_wave(minimum=low, maximum=HIGH, period=60, step=1)
        shown = "2 GiB" if low == HIGH else "3 GiB"
        assert str(info.value) == f"--min ({shown}) must be below --max (2 GiB)"


@pytest.mark.parametrize("step", [30.0, 27.0, 20.0, 0.5])
def test_a_step_up_to_half_the_period_is_allowed(step: float) -> None:
    check_wave(minimum=LOW, maximum=HIGH, period=60, step=step)


@pytest.mark.parametrize("step", [30.001, 45.0, 60.0, 120.0])
def test_a_step_past_half_the_period_is_refused_naming_the_options(step: float) -> None:
    with pytest.raises(UsageError) as info:
        check_wave(minimum=LOW, maximum=HIGH, period=60, step=step)
    assert str(info.value) == (f"--step ({step:g}s) must be at most half of --period (60s), "
                               "or the wave never reaches --min")


def test_a_step_below_one_second_is_a_step() -> None:
    steps = list(wave_schedule(minimum=LOW, maximum=HIGH, period=2, step=0.5, cycles=1))
    assert [t for t, _ in steps] == [0, 0.5, 1, 1.5, 2]
    assert [v for _, v in steps] == [HIGH, 1536 * MiB, LOW, 1536 * MiB, HIGH]


def test_a_step_that_is_not_positive_is_refused() -> None:
    for step in (0.0, -0.5):
        with pytest.raises(ValueError):
            next(wave_schedule(minimum=LOW, maximum=HIGH, period=2, step=step, cycles=1))


def test_a_step_that_does_not_divide_the_period_still_ends_on_the_top() -> None:
    steps = list(wave_schedule(minimum=LOW, maximum=HIGH, period=10, step=4, cycles=1))
    assert [t for t, _ in steps] == [0, 4, 8, 10]
    assert steps[-1][1] == HIGH


# --- triangle_wave and clamp_step ---------------------------------------------------------------


def test_an_unaligned_maximum_is_reached_exactly() -> None:
    top = GiB + 12345  # not whole MiB: the wave still starts and ends on it
    assert triangle_wave(0, minimum=LOW, maximum=top, period=60) == top
    assert triangle_wave(60, minimum=LOW, maximum=top, period=60) == top
    assert triangle_wave(15, minimum=LOW, maximum=top, period=60) % MiB == 0


def test_wrong_waves_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="period"):
        triangle_wave(0, minimum=LOW, maximum=HIGH, period=0)
    with pytest.raises(ValueError, match="minimum"):
        triangle_wave(0, minimum=HIGH, maximum=LOW, period=1)
    with pytest.raises(ValueError, match="step"):
        next(wave_schedule(minimum=LOW, maximum=HIGH, period=2, step=0, cycles=1))


def test_a_step_limit_that_is_not_positive_is_no_limit() -> None:
    assert clamp_step(GiB, 3 * GiB, 0) == 3 * GiB
    assert clamp_step(3 * GiB, GiB, -5) == GiB
    assert clamp_step(GiB, 3 * GiB, 1) == GiB + 1  # the smallest limit still limits


# --- share_targets -------------------------------------------------------------------------------


def vm(name: str, *, ram: int | None = 4 * GiB, actual: int | None = 4 * GiB,
       reachable: bool = True, floor: int | None = None) -> BalloonState:
    return BalloonState(name=name, qmp=f"/{name}.qmp", reachable=reachable, guest_ram=ram,
                        actual=actual, floor=floor, stats=GuestStats(last_update=1))


def split(states: list[BalloonState], refs: dict[str, VmRef], budget: int,
          max_step: int | None = None) -> dict[str, ShareTarget]:
    return {t.name: t for t in share_targets(states, refs, budget=budget, max_step=max_step)}


def test_a_vm_with_an_unknown_size_or_out_of_reach_is_left_alone() -> None:
    got = split([vm("a", actual=None), vm("b", ram=None), vm("c", reachable=False),
                 vm("d").with_changes(stats=GuestStats())], {}, 4 * GiB)
    assert all(got[n].target is None for n in "abcd")
    assert all("unreachable" in got[n].reason for n in "abc")
    assert "driver" in got["d"].reason


def test_the_state_floor_holds_when_the_inventory_has_no_minimum() -> None:
    got = split([vm("a", floor=3 * GiB)], {}, 1 * GiB)
    assert got["a"].target == 3 * GiB
    assert got["a"].reason == "held at its floor 3 GiB"


def test_shares_of_one_and_the_default_of_1000() -> None:
    refs = {"a": VmRef("a", "/a", shares=1), "b": VmRef("b", "/b", shares=3)}
    got = split([vm("a"), vm("b")], refs, 4 * GiB)
    assert (got["a"].target, got["b"].target) == (GiB, 3 * GiB)
    assert got["a"].reason == "1 shares of 4 GiB"
    # a VM the inventory does not list weighs the default 1000
    got = split([vm("a"), vm("b")], {"b": VmRef("b", "/b", shares=1000)}, 4 * GiB)
    assert (got["a"].target, got["b"].target) == (2 * GiB, 2 * GiB)


def test_a_fair_share_exactly_at_the_floor_is_the_floor() -> None:
    refs = {n: VmRef(n, f"/{n}", minimum=GiB) for n in "ab"}
    got = split([vm("a"), vm("b")], refs, 2 * GiB)
    assert (got["a"].target, got["b"].target) == (GiB, GiB)


def test_a_cap_is_named_with_its_size() -> None:
    got = split([vm("a"), vm("b")], {"a": VmRef("a", "/a", maximum=512 * MiB)}, 4 * GiB)
    assert got["a"].target == 512 * MiB and got["a"].reason == "capped at 512 MiB"


def test_a_step_limited_move_says_both_parts() -> None:
    got = split([vm("a")], {}, 3 * GiB, max_step=256 * MiB)
    assert got["a"].target == 4 * GiB - 256 * MiB
    assert got["a"].reason == "1000 shares of 3 GiB; step limited toward 3 GiB"


def test_a_step_from_an_actual_of_zero() -> None:
    got = split([vm("a", actual=0)], {}, 3 * GiB, max_step=256 * MiB)
    assert got["a"].target == 256 * MiB
