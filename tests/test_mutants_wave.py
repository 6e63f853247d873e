"""The wave's limits at their edge and one step past: the cases `./dev mutate` found untested.

Oracles: ``check_wave``'s docstring (bounds in order; at least two steps per period, so a
step of exactly half the period is the longest allowed) and ``wave_schedule``'s (a pair
every ``step`` seconds, ending on ``maximum`` after ``cycles`` periods; a step that is not
positive is refused).
"""

from __future__ import annotations

import pytest

from balloonctl.errors import UsageError
from balloonctl.units import GiB, MiB
from balloonctl.wave import check_wave, wave_schedule

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
