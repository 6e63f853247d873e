"""``decide``: the rules of ``balloonctl.policy`` (its docstring lists them) as arithmetic.

Every amount is ``int`` bytes; moves are whole MiB (the guest driver moves the balloon in
1 MiB batches anyway), rounded toward "move less", so a round never overshoots what the host
needs or has to spare: that, with the hysteresis band, is what keeps steady load steady.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from balloonctl.host import HostMemory
from balloonctl.model import HARD_MINIMUM, HintMode, default_floor
from balloonctl.policy.inputs import Action, Decision, VmInput, VmRates
from balloonctl.policy.settings import PolicySettings, VmPolicy
from balloonctl.units import MiB
from balloonctl.units import format_size as _format_size

__all__ = ["decide"]

_ALIGN = MiB

# Reasons name a few sizes per VM; the same sizes recur round after round (whole MiB), and
# formatting them is most of a round's cost for a big fleet.
format_size = lru_cache(maxsize=8192)(_format_size)

_NO_OVERRIDES = VmPolicy()
_HONOURED = frozenset((HintMode.DEVICE, HintMode.AGENT))


def _down(n: int) -> int:
    return (n // _ALIGN) * _ALIGN


def _pct(fraction: float, digits: int = 1) -> str:
    text = f"{fraction * 100:.{digits}f}"
    return (text.rstrip("0").rstrip(".") if "." in text else text) + " %"


def _vs(value: float, limit: float) -> tuple[str, str]:
    """``value`` and ``limit`` as percentages, with enough digits to tell them apart."""
    for digits in (1, 2, 3, 4):
        a, b = _pct(value, digits), _pct(limit, digits)
        if a != b:
            break
    return a, b


@dataclass(slots=True)
class _Vm:
    """What the rules need of one managed VM, measured once."""

    index: int
    name: str
    actual: int
    floor: int
    ceiling: int
    at_ram: bool  # the ceiling is guest RAM (not a configured maximum)
    shares: int
    reserve: int
    hint: str  # "hint on: cache first", "hint off: cache counts as used", ...
    cache_first: bool
    available: int
    headroom: int  # free (+ clean cache above its reserve, hint on) minus the free reserve
    spare_cache: int  # reclaimable now: clean cache above the cache reserve
    spare_free: int  # reclaimable now: free memory above the free reserve


class _Mode(enum.Enum):
    SHORT = "short"
    STEADY = "steady"
    SPARE = "spare"


@dataclass(frozen=True, slots=True)
class _Host:
    mode: _Mode
    why: str  # "host available 9 % < 15 %"
    amount: int  # to reclaim (SHORT) or to give back (SPARE)


def decide(vms: Sequence[VmInput], host: HostMemory, settings: PolicySettings) -> list[Decision]:
    """One decision per VM, in the order given (``balloonctl.policy`` lists the rules).
    Never raises for any snapshot: what cannot be judged is left alone, with the reason."""
    out: list[Decision | None] = [None] * len(vms)
    managed: list[_Vm] = []
    forced = 0  # bytes the forced moves (bounds, emergency, thrashing) take from the host
    for i, vm in enumerate(vms):
        why = _leave_reason(vm, settings)
        if why is not None:
            out[i] = Decision(vm.state.name, Action.LEAVE, None, vm.state.actual, why)
            continue
        v = _measure(i, vm, settings)
        d = _forced(v, vm.rates, settings)
        if d is None:
            managed.append(v)
            continue
        out[i] = d
        if d.target is not None:
            forced += d.target - v.actual
    h = _host_state(host, settings, forced)
    if h.mode is _Mode.SHORT:
        _reclaim(managed, h, settings, out)
    elif h.mode is _Mode.SPARE:
        _give_back(managed, h, settings, out)
    else:
        for v in managed:
            out[v.index] = Decision(v.name, Action.HOLD, None, v.actual, f"{h.why}: no change")
    return [d for d in out if d is not None]


def _leave_reason(vm: VmInput, settings: PolicySettings) -> str | None:
    """Why ``vm`` is left alone this cycle, or ``None`` when the rules may move it."""
    s = vm.state
    if not s.reachable:  # the same words as BalloonState.status, without its other checks
        if s.error_kind == "SocketBusy":
            return "left alone: socket busy (another QMP client holds it)"
        return f"left alone: unreachable ({s.error or 'no answer'})"
    if not s.has_device:
        return "left alone: no balloon device"
    if s.stats is None or not s.stats.reported:
        return "left alone: no stats from the guest balloon driver"
    if s.actual is None or s.guest_ram is None:
        return "left alone: guest RAM or balloon size unknown"
    if s.polling_interval == 0:  # frozen: nothing the guest reports will change
        return "left alone: stats are stale (stats polling is off)"
    age = s.stats_age
    if s.stale or (age is not None and age > settings.stale_after):
        shown = "?" if age is None else f"{age:.0f} s"
        return f"left alone: stats are stale (last report {shown} ago)"
    if s.stats.free_memory is None:
        return "left alone: stats are missing free memory"
    if not vm.owned:
        return ("left alone: its target was set by another writer (foreign); "
                "balloonctl takes it back only when told")
    if s.hint.enabled and s.hint.mode is HintMode.AGENT and vm.qga_reachable is False:
        return "left alone: the cache-first hint needs qga and qga is unreachable"
    return None


def _measure(index: int, vm: VmInput, settings: PolicySettings) -> _Vm:
    """The VM's bounds, reserves and what could be taken from it now. The floor is its
    minimum (or the state's floor, or the default floor), at least the hard minimum and at
    most the ceiling (its maximum or guest RAM, the lower)."""
    s, stats, hint = vm.state, vm.state.stats, vm.state.hint
    ram, actual = s.guest_ram, s.actual
    assert stats is not None and stats.free_memory is not None  # _leave_reason checked
    assert ram is not None and actual is not None
    own = vm.policy if vm.policy is not None else settings.vms.get(s.name, _NO_OVERRIDES)
    maximum = own.maximum if own.maximum is not None else s.maximum
    ceiling = ram if maximum is None or maximum >= ram else maximum
    floor = own.minimum if own.minimum is not None else (
        s.floor if s.floor is not None else default_floor(ram))
    floor = min(max(floor, HARD_MINIMUM), ceiling)
    reserve = settings.free_reserve if own.free_reserve is None else own.free_reserve
    free = stats.free_memory
    available = free if stats.available_memory is None else stats.available_memory
    cache_first = hint.enabled and hint.mode in _HONOURED
    if cache_first:
        text = "hint on: cache first"
        cache_reserve = settings.cache_reserve if own.cache_reserve is None \
            else own.cache_reserve
        cache_above = max(0, (stats.disk_caches or 0) - cache_reserve)
    else:
        text = (f"hint on but not honoured ({hint.mode.value}): cache counts as used"
                if hint.enabled else "hint off: cache counts as used")
        cache_above = 0
    # never take the guest's available memory below its reserve either (MemAvailable may
    # be below free + cache: not all cache is clean)
    headroom = min(free + cache_above, max(available, free)) - reserve
    spare = max(0, min(headroom, actual - floor))
    spare_cache = min(cache_above, spare)
    shares = own.shares if own.shares is not None else settings.shares
    return _Vm(index, s.name, actual, floor, ceiling, ceiling == ram, shares, reserve, text,
               cache_first, available, headroom, spare_cache, spare - spare_cache)


def _top(v: _Vm) -> str:
    return f"guest RAM {format_size(v.ceiling)}" if v.at_ram else \
        f"its maximum {format_size(v.ceiling)}"


def _thrashing(rates: VmRates, settings: PolicySettings) -> str | None:
    parts = []
    if rates.swap_in is not None and rates.swap_in > settings.swap_in_rate:
        parts.append(f"swaps in {format_size(int(rates.swap_in))}/s > "
                     f"{format_size(settings.swap_in_rate)}/s")
    if rates.major_faults is not None and rates.major_faults > settings.fault_rate:
        parts.append(f"major faults {rates.major_faults:.4g}/s > {settings.fault_rate:g}/s")
    return " and ".join(parts) or None


def _forced(v: _Vm, rates: VmRates, settings: PolicySettings) -> Decision | None:
    """Bounds, emergency and thrashing: what moves a VM whatever the host's state."""
    if v.actual > v.ceiling:
        return Decision(v.name, Action.SHRINK, v.ceiling, v.actual,
                        f"above {_top(v)}: lowered to it at once")
    target, why = v.actual, []
    if v.actual < v.floor:
        target = v.floor
        why.append(f"below its floor {format_size(v.floor)}: raised to it at once")
    emergency = v.available < settings.emergency_free
    if emergency:
        want = min(v.ceiling, v.actual + v.reserve - v.available)
        text = (f"{v.name} available {format_size(v.available)} < emergency level "
                f"{format_size(settings.emergency_free)}")
        if want > target:
            why.append(f"{text}: deflate at once by {format_size(want - v.actual)} "
                       f"(to its free reserve {format_size(v.reserve)})")
            target = want
        elif not why:
            return Decision(v.name, Action.HOLD, None, v.actual,
                            f"{text}, but already at {_top(v)}")
    if target > v.actual:
        return Decision(v.name, Action.GROW, target, v.actual, "; ".join(why))
    thrash = _thrashing(rates, settings)
    if thrash is None:
        return None
    thrash = f"{v.name} {thrash}: never shrunk"
    give = _down(min(settings.max_step, v.ceiling - v.actual))
    if v.ceiling - v.actual <= 0:
        return Decision(v.name, Action.HOLD, None, v.actual, f"{thrash}; already at {_top(v)}")
    if give < settings.deadband or give == 0:
        return Decision(v.name, Action.HOLD, None, v.actual,
                        f"{thrash}; {format_size(v.ceiling - v.actual)} below {_top(v)}, "
                        f"under the deadband {format_size(settings.deadband)}")
    return Decision(v.name, Action.GROW, v.actual + give, v.actual,
                    f"{thrash}, given {format_size(give)} back first")


def _host_state(host: HostMemory, settings: PolicySettings, forced: int) -> _Host:
    """The host's mode after the forced moves (``forced`` bytes given to guests; negative
    when taken), so that what rules 2-4 gave is reclaimed from the others the same cycle."""
    target = int(host.total * settings.target_available)
    upper = target + int(host.total * settings.hysteresis)
    available = host.available - forced
    fraction = available / host.total if host.total > 0 else 0.0
    psi = host.psi.some_avg10 if host.psi is not None else None
    pressure = psi is not None and psi > settings.psi_threshold
    low = available < target

    def shown(limit: float) -> tuple[str, str]:
        now, edge = _vs(fraction, limit)
        if forced:
            now = (f"{_pct(host.available_fraction)} ({now} after {format_size(abs(forced))} "
                   f"{'given to' if forced > 0 else 'taken from'} guests first)")
        return now, edge

    if low or pressure:
        why = []
        if low:
            now, edge = shown(settings.target_available)
            why.append(f"host available {now} < {edge}")
        if pressure:
            why.append(f"host PSI some avg10 {psi:g} % > {settings.psi_threshold:g} %")
        need = max(0, target - available)
        if pressure:
            need = max(need, settings.max_step)  # stalls with memory to spare: a step at a time
        return _Host(_Mode.SHORT, " and ".join(why), need)
    top = settings.target_available + settings.hysteresis
    if available > upper:
        now, edge = shown(top)
        return _Host(_Mode.SPARE, f"host available {now} > {edge}", available - upper)
    now, _ = shown(top)
    return _Host(_Mode.STEADY, f"host available {now} within "
                 f"{_pct(settings.target_available)}-{_pct(top)}", 0)


def _split(amount: int, items: list[tuple[int, float, int]], deadband: int) -> dict[int, int]:
    """Split ``amount`` over ``(key, weight, cap)`` items in proportion to weight, none over
    its cap (water-filling: what a capped item cannot take goes to the others). When the
    amount is too small for every item to move by the deadband, only the heaviest
    ``amount // deadband`` items (most room first among equals) share it."""
    items = [it for it in items if it[2] > 0]
    if amount <= 0 or not items:
        return {}
    useful = max(1, amount // max(deadband, 1))
    if len(items) > useful:
        items = sorted(items, key=lambda it: (-it[1], -it[2], it[0]))[:useful]
    items.sort(key=lambda it: it[2] / it[1])
    total = sum(it[1] for it in items)
    left = amount
    out: dict[int, int] = {}
    for key, weight, cap in items:
        fair = left if total <= weight else round(left * weight / total)
        give = max(0, min(cap, fair, left))
        out[key] = give
        left -= give
        total -= weight
    return out


def _spare_text(v: _Vm) -> str:
    if v.cache_first:
        have = (f"{format_size(v.spare_cache)} clean cache above its cache reserve and "
                f"{format_size(v.spare_free)} free above its reserve")
    else:
        have = f"{format_size(v.spare_free)} free above its reserve"
    return f"{v.name} has {have} ({v.hint})"


def _reclaim(managed: list[_Vm], h: _Host, s: PolicySettings, out: list[Decision | None]) -> None:
    """Take ``h.amount`` from the managed VMs: clean cache above its reserve first (hint on),
    then free memory above the reserve, each in inverse proportion to shares."""
    first = _split(h.amount, [(v.index, 1 / v.shares, min(v.spare_cache, s.max_step))
                              for v in managed], s.deadband)
    rest = h.amount - sum(first.values())
    second = _split(rest, [(v.index, 1 / v.shares,
                            min(v.spare_free, s.max_step - first.get(v.index, 0)))
                           for v in managed], s.deadband)
    head = f"{h.why}: reclaim {format_size(h.amount)}"
    for v in managed:
        take = _down(first.get(v.index, 0) + second.get(v.index, 0))
        if h.amount < s.deadband:
            out[v.index] = Decision(v.name, Action.HOLD, None, v.actual,
                                    f"{head}, under the deadband {format_size(s.deadband)}")
        elif v.spare_cache + v.spare_free == 0:
            what = (f"{v.name} is at its floor {format_size(v.floor)}" if v.actual <= v.floor
                    else f"{v.name} has nothing above its reserves ({v.hint})")
            out[v.index] = Decision(v.name, Action.HOLD, None, v.actual, f"{head}, but {what}")
        elif take == 0:
            out[v.index] = Decision(v.name, Action.HOLD, None, v.actual,
                                    f"{head}, taken from other VMs first")
        elif take < s.deadband:
            out[v.index] = Decision(
                v.name, Action.HOLD, None, v.actual,
                f"{head}; {v.name}'s part {format_size(take)} is under the deadband "
                f"{format_size(s.deadband)}")
        else:
            limit = f" (step limit {format_size(s.max_step)})" if take == s.max_step else ""
            out[v.index] = Decision(
                v.name, Action.SHRINK, v.actual - take, v.actual,
                f"{head}, {_spare_text(v)}: takes {format_size(take)}{limit}")


def _give_back(managed: list[_Vm], h: _Host, s: PolicySettings,
               out: list[Decision | None]) -> None:
    """Give ``h.amount`` back, at most a step per VM: guests below their free reserve first
    (least free first), then the rest in proportion to their shares."""
    room = {v.index: _down(min(s.max_step, v.ceiling - v.actual)) for v in managed}
    left = h.amount
    gives: dict[int, int] = {}
    for v in sorted((v for v in managed if v.headroom < 0), key=lambda v: (v.headroom, v.index)):
        gives[v.index] = min(room[v.index], left)
        left -= gives[v.index]
    gives.update(_split(left, [(v.index, float(v.shares), room[v.index])
                               for v in managed if v.headroom >= 0], s.deadband))
    head = f"{h.why}: give back {format_size(h.amount)}"
    for v in managed:
        give = _down(gives.get(v.index, 0))
        if v.ceiling - v.actual <= 0:
            d = Decision(v.name, Action.HOLD, None, v.actual, f"{h.why}: already at {_top(v)}")
        elif h.amount < s.deadband:
            d = Decision(v.name, Action.HOLD, None, v.actual,
                         f"{head}, under the deadband {format_size(s.deadband)}")
        elif give == 0:
            d = Decision(v.name, Action.HOLD, None, v.actual, f"{head}, to other VMs first")
        elif give < s.deadband:
            d = Decision(v.name, Action.HOLD, None, v.actual,
                         f"{head}; {v.name}'s part {format_size(give)} is under the deadband "
                         f"{format_size(s.deadband)}")
        else:
            if v.headroom < 0:
                why = f"{v.name} is {format_size(-v.headroom)} below its free reserve"
            else:
                why = (f"{v.name} has {format_size(v.headroom)} free above its reserve, "
                       f"{v.shares} shares")
            limit = f" (step limit {format_size(s.max_step)})" if give == s.max_step else ""
            d = Decision(v.name, Action.GROW, v.actual + give, v.actual,
                         f"{head}, {why}: gets {format_size(give)}{limit}")
        out[v.index] = d
