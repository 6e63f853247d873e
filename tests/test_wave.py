"""Wave helpers: the triangular wave, step clamping, the share-based split."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from balloonctl.model import BalloonState, GuestStats, VmRef
from balloonctl.units import GiB, MiB
from balloonctl.wave import clamp_step, share_targets, triangle_wave, wave_schedule

LOW, HIGH = 500 * MiB, 1500 * MiB


def test_triangle_wave_corners() -> None:
    def w(t: float) -> int:
        return triangle_wave(t, minimum=LOW, maximum=HIGH, period=60)

    assert w(0) == HIGH
    assert w(15) == 1000 * MiB
    assert w(30) == LOW
    assert w(45) == 1000 * MiB
    assert w(60) == HIGH and w(90) == LOW  # periodic


@given(t=st.floats(min_value=0, max_value=1e6, allow_nan=False),
       low=st.integers(min_value=128 * MiB, max_value=4 * GiB),
       span=st.integers(min_value=0, max_value=4 * GiB),
       period=st.floats(min_value=0.1, max_value=3600))
def test_triangle_wave_stays_in_bounds_and_is_symmetric(
    t: float, low: int, span: int, period: float
) -> None:
    high = low + span
    v = triangle_wave(t, minimum=low, maximum=high, period=period)
    assert low <= v <= high
    assert v == high or v % MiB == 0 or v == low
    phase = t % period
    mirrored = triangle_wave(period - phase, minimum=low, maximum=high, period=period)
    assert abs(v - mirrored) <= MiB  # the way down mirrors the way up


def test_triangle_wave_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        triangle_wave(0, minimum=LOW, maximum=HIGH, period=0)
    with pytest.raises(ValueError):
        triangle_wave(0, minimum=HIGH, maximum=LOW, period=1)


def test_wave_schedule_ends_on_the_top_after_the_cycles() -> None:
    steps = list(wave_schedule(minimum=LOW, maximum=HIGH, period=10, step=2.5, cycles=2))
    assert [t for t, _ in steps] == [0, 2.5, 5, 7.5, 10, 12.5, 15, 17.5, 20]
    assert [v for _, v in steps] == [HIGH, 1000 * MiB, LOW, 1000 * MiB, HIGH,
                                     1000 * MiB, LOW, 1000 * MiB, HIGH]
    forever = wave_schedule(minimum=LOW, maximum=HIGH, period=10, step=3, cycles=None)
    assert [next(forever)[0] for _ in range(5)] == [0, 3, 6, 9, 12]
    with pytest.raises(ValueError):
        next(wave_schedule(minimum=LOW, maximum=HIGH, period=10, step=0, cycles=1))


@given(current=st.integers(0, 8 * GiB), target=st.integers(0, 8 * GiB),
       step=st.integers(1, GiB))
def test_clamp_step_moves_toward_the_target_by_at_most_a_step(
    current: int, target: int, step: int
) -> None:
    moved = clamp_step(current, target, step)
    assert abs(moved - current) <= step
    assert min(current, target) <= moved <= max(current, target)
    assert moved == target or abs(moved - current) == step
    assert clamp_step(current, target, None) == target


def state(name: str, ram: int = 4 * GiB, actual: int | None = None, **kw: object) -> BalloonState:
    return BalloonState(name=name, qmp=f"/{name}.qmp", reachable=True, guest_ram=ram,
                        actual=ram if actual is None else actual,
                        stats=GuestStats(last_update=1), **kw)  # type: ignore[arg-type]


def test_shares_split_the_budget() -> None:
    refs = {"a": VmRef("a", "/a", shares=1000), "b": VmRef("b", "/b", shares=3000)}
    d = {x.name: x for x in share_targets([state("a"), state("b")], refs, budget=4 * GiB)}
    assert d["a"].target == 1 * GiB and d["b"].target == 3 * GiB
    assert "shares" in d["a"].reason


def test_clamped_vms_leave_their_share_to_the_others() -> None:
    refs = {"a": VmRef("a", "/a", minimum=2 * GiB), "b": VmRef("b", "/b"),
            "c": VmRef("c", "/c", maximum=512 * MiB)}
    states = [state("a"), state("b"), state("c")]
    d = {x.name: x for x in share_targets(states, refs, budget=4 * GiB)}
    assert d["a"].target == 2 * GiB and "floor" in d["a"].reason
    assert d["c"].target == 512 * MiB and "capped" in d["c"].reason
    assert d["b"].target == 4 * GiB - 2 * GiB - 512 * MiB


def test_unreachable_or_driverless_vms_are_left_alone() -> None:
    down = BalloonState(name="down", qmp="/d", reachable=False)
    nodriver = state("nd").with_changes(stats=GuestStats())
    d = share_targets([down, nodriver, state("ok")], {}, budget=2 * GiB)
    assert [(x.name, x.target) for x in d[:2]] == [("down", None), ("nd", None)]
    assert d[2].target == 2 * GiB


def test_step_limit_applies_to_share_targets() -> None:
    d = share_targets([state("a")], {}, budget=1 * GiB, max_step=256 * MiB)
    assert d[0].target == 4 * GiB - 256 * MiB and "step limited" in d[0].reason


@given(budget=st.integers(0, 64 * GiB),
       shares=st.lists(st.integers(1, 10_000), min_size=1, max_size=6))
def test_share_targets_respect_bounds(budget: int, shares: list[int]) -> None:
    refs = {f"v{i}": VmRef(f"v{i}", "/x", shares=s) for i, s in enumerate(shares)}
    states = [state(n) for n in refs]
    for dec in share_targets(states, refs, budget=budget):
        assert dec.target is not None
        assert 409 * MiB <= dec.target <= 4 * GiB  # default floor of 4 GiB: 10%
