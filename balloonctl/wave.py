"""Target shapes for the ``wave`` command and scripted splits: numbers in, targets out.
No I/O, no clocks, no sockets. (The automatic-ballooning policy is ``balloonctl.policy``.)

- ``triangle_wave``: the RFC's first experiment, a target that sweeps between two sizes.
- ``clamp_step``: limit how far one step may move a target.
- ``share_targets``: split a host memory budget across VMs by shares, within each VM's limits.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from balloonctl.errors import UsageError
from balloonctl.model import BalloonState, VmRef, default_floor
from balloonctl.units import MiB, format_size

__all__ = [
    "ShareTarget",
    "check_wave",
    "clamp_step",
    "share_targets",
    "triangle_wave",
    "wave_schedule",
]

# Targets are rounded to whole MiB: the guest moves the balloon in 1 MiB steps anyway.
_ALIGN = MiB


def _align(n: int) -> int:
    return (n // _ALIGN) * _ALIGN


def triangle_wave(t: float, *, minimum: int, maximum: int, period: float) -> int:
    """The target at time ``t`` (seconds since the start) of a triangular wave that starts
    at ``maximum``, reaches ``minimum`` at half the period and is back at ``maximum`` at the
    end of it. Rounded down to whole MiB but never below ``minimum``.

    Raises:
        ValueError: ``period`` is not positive or ``minimum`` is above ``maximum``.
    """
    if period <= 0:
        raise ValueError("period must be positive")
    if minimum > maximum:
        raise ValueError("minimum is above maximum")
    phase = (t % period) / period  # 0..1
    depth = 1.0 - abs(2.0 * phase - 1.0)  # 0 at the ends, 1 in the middle
    value = maximum - round((maximum - minimum) * depth)
    return max(minimum, min(maximum, _align(value) if value != maximum else value))


def check_wave(*, minimum: int, maximum: int, period: float, step: float) -> None:
    """Refuse a wave that cannot be drawn: bounds out of order, or a step so long that the
    wave would never reach its bottom (at least two steps per period are needed).

    Raises:
        UsageError: naming the options (``--min``, ``--max``, ``--step``, ``--period``).
    """
    if minimum >= maximum:
        raise UsageError(
            f"--min ({format_size(minimum)}) must be below --max ({format_size(maximum)})")
    if step > period / 2:
        raise UsageError(
            f"--step ({step:g}s) must be at most half of --period ({period:g}s), "
            "or the wave never reaches --min")


def wave_schedule(
    *, minimum: int, maximum: int, period: float, step: float, cycles: int | None
) -> Iterator[tuple[float, int]]:
    """``(time, target)`` pairs every ``step`` seconds, ending on ``maximum`` after
    ``cycles`` full periods (forever when ``cycles`` is None).

    Raises:
        ValueError: ``step`` or ``period`` is not positive.
    """
    if step <= 0:
        raise ValueError("step must be positive")
    end = None if cycles is None else cycles * period
    i = 0
    while True:
        t = i * step
        if end is not None and t >= end - 1e-9:
            yield end, triangle_wave(end, minimum=minimum, maximum=maximum, period=period)
            return
        yield t, triangle_wave(t, minimum=minimum, maximum=maximum, period=period)
        i += 1


def clamp_step(current: int, target: int, max_step: int | None) -> int:
    """Move from ``current`` toward ``target`` by at most ``max_step`` bytes (no limit when
    ``max_step`` is None or not positive)."""
    if max_step is None or max_step <= 0:
        return target
    if target > current:
        return min(target, current + max_step)
    return max(target, current - max_step)


@dataclass(frozen=True, slots=True)
class ShareTarget:
    """``share_targets``' proposed target for one VM, with the reason in words."""

    name: str
    target: int | None
    reason: str


def share_targets(
    states: Sequence[BalloonState],
    refs: Mapping[str, VmRef],
    *,
    budget: int,
    max_step: int | None = None,
) -> list[ShareTarget]:
    """Split ``budget`` bytes of guest memory across the reachable VMs in proportion to
    their shares, each kept within ``[floor, min(maximum, guest RAM)]`` (water-filling: what
    a clamped VM cannot take is shared by the others). A VM that is unreachable, has no
    driver or unknown RAM gets ``target=None``. ``max_step`` limits each move from ``actual``.
    """
    decisions: dict[str, ShareTarget] = {}
    bounds: dict[str, tuple[int, int]] = {}
    shares: dict[str, int] = {}
    for s in states:
        if not s.reachable or s.guest_ram is None or s.actual is None:
            decisions[s.name] = ShareTarget(s.name, None, "unreachable or unknown RAM: left alone")
            continue
        if not s.driver_ready:
            decisions[s.name] = ShareTarget(s.name, None, "guest balloon driver not ready")
            continue
        ref = refs.get(s.name)
        floor = (
            ref.minimum if ref is not None and ref.minimum is not None
            else s.floor if s.floor is not None else default_floor(s.guest_ram)
        )
        ceiling = s.guest_ram
        if ref is not None and ref.maximum is not None:
            ceiling = min(ceiling, ref.maximum)
        floor = min(floor, ceiling)
        bounds[s.name] = (floor, ceiling)
        shares[s.name] = max(1, ref.shares if ref is not None else 1000)

    # water-filling: fix VMs whose fair share falls outside their bounds, then re-split
    alloc: dict[str, int] = {}
    open_ = set(bounds)
    remaining = budget
    while open_:
        total = sum(shares[n] for n in open_)
        fair = {n: remaining * shares[n] / total for n in open_}
        clamped = {n for n in open_ if not bounds[n][0] <= fair[n] <= bounds[n][1]}
        if not clamped:
            for n in open_:
                alloc[n] = int(fair[n])
            break
        for n in clamped:
            lo, hi = bounds[n]
            alloc[n] = lo if fair[n] < lo else hi
            remaining -= alloc[n]
        open_ -= clamped
        remaining = max(0, remaining)

    by_name = {s.name: s for s in states}
    for name, want in alloc.items():
        lo, hi = bounds[name]
        actual = by_name[name].actual or 0
        target = max(lo, min(hi, _align(want)))
        stepped = clamp_step(actual, target, max_step)
        if want <= lo:
            why = f"held at its floor {format_size(lo)}"
        elif want >= hi:
            why = f"capped at {format_size(hi)}"
        else:
            why = f"{shares[name]} shares of {format_size(budget)}"
        if stepped != target:
            why += f"; step limited toward {format_size(target)}"
        decisions[name] = ShareTarget(name, stepped, why)
    return [decisions[s.name] for s in states]
