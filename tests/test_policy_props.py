"""Properties of the policy over generated fleets: safety bounds hold for any input, and a
steady load settles (the policy's own targets fed back as the next actuals stop changing)."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from balloonctl.host import HostMemory, Psi
from balloonctl.model import HARD_MINIMUM, BalloonState, GuestStats, HintMode, HintState
from balloonctl.policy import Action, PolicySettings, VmInput, VmPolicy, VmRates, decide
from balloonctl.units import GiB, MiB

NOW = 1_000_000
mib = st.integers  # readability: sizes below are drawn in MiB


@dataclass(frozen=True)
class Guest:
    """A guest under constant load: ``used`` anonymous memory, page cache that fills what
    is left up to ``cache_want``; the rest is free."""

    name: str
    ram: int
    used: int
    cache_want: int
    hint: bool
    shares: int
    minimum: int | None
    maximum: int | None
    thrashing: bool

    def state(self, actual: int) -> BalloonState:
        cache = min(self.cache_want, max(0, actual - self.used))
        free = max(0, actual - self.used - cache)
        stats = GuestStats(last_update=NOW - 1, free_memory=free, disk_caches=cache,
                           available_memory=free + cache, swap_in=0, major_faults=0)
        return BalloonState(name=self.name, qmp=f"/{self.name}", reachable=True,
                            actual=actual, guest_ram=self.ram, stats=stats,
                            hint=HintState(mode=HintMode.DEVICE, enabled=self.hint),
                            taken_at=float(NOW))

    def input(self, actual: int) -> VmInput:
        rates = VmRates(swap_in=8 * MiB if self.thrashing else 0.0, major_faults=0.0)
        return VmInput(self.state(actual), rates=rates,
                       policy=VmPolicy(minimum=self.minimum, maximum=self.maximum,
                                       shares=self.shares))

    def bounds(self) -> tuple[int, int]:
        ceiling = self.ram if self.maximum is None else min(self.ram, self.maximum)
        floor = self.minimum if self.minimum is not None else max(256 * MiB, self.ram // 10)
        return min(max(floor, HARD_MINIMUM), ceiling), ceiling


@st.composite
def guests(draw: st.DrawFn, name: str) -> Guest:
    ram = draw(mib(512, 8192)) * MiB
    minimum = draw(st.none() | mib(128, 1024).map(lambda m: m * MiB))
    maximum = draw(st.none() | mib(256, 8192).map(lambda m: m * MiB))
    if minimum is not None and maximum is not None and minimum > maximum:
        minimum, maximum = maximum, minimum
    return Guest(name=name, ram=ram, used=draw(mib(0, 8192)) * MiB,
                 cache_want=draw(mib(0, 4096)) * MiB, hint=draw(st.booleans()),
                 shares=draw(st.integers(1, 50_000)), minimum=minimum, maximum=maximum,
                 thrashing=draw(st.sampled_from([False, False, True])))


POLICIES = st.builds(
    PolicySettings,
    target_available=st.sampled_from([0.1, 0.15, 0.3]),
    hysteresis=st.sampled_from([0.0, 0.02, 0.05]),
    deadband=st.sampled_from([0, 1 * MiB, 16 * MiB]),
    max_step=st.sampled_from([64 * MiB, 128 * MiB, 512 * MiB]),
    cache_reserve=st.sampled_from([0, 128 * MiB]),
)

ROUNDS = 400  # a VM crosses at most 8 GiB in 64 MiB steps: 128 rounds each way


@settings(max_examples=150, deadline=None)
@given(fleet=st.lists(st.integers(0, 10**6), min_size=1, max_size=5, unique=True).flatmap(
           lambda ids: st.tuples(*(guests(f"vm{i}") for i in ids))),
       host_ram=mib(1024, 32768), host_own=mib(0, 4096), psi=st.sampled_from([None, 0.0, 50.0]),
       policy=POLICIES, start=st.floats(0.0, 1.0))
def test_steady_load_settles_and_stops_changing(
    fleet: tuple[Guest, ...], host_ram: int, host_own: int, psi: float | None,
    policy: PolicySettings, start: float,
) -> None:
    total = host_ram * MiB

    def host(actuals: list[int]) -> HostMemory:
        available = max(0, total - host_own * MiB - sum(actuals))
        return HostMemory(total=total, available=available, free=available, cached=0, anon=0,
                          swap_total=0, swap_free=0,
                          psi=None if psi is None else Psi(psi, psi, psi, 0, 0, 0))

    actuals = [g.bounds()[0] + int((g.ram - g.bounds()[0]) * start) // MiB * MiB
               for g in fleet]
    history: list[list[int]] = [actuals]
    for _ in range(ROUNDS):
        out = decide([g.input(a) for g, a in zip(fleet, actuals, strict=True)],
                     host(actuals), policy)
        actuals = [a if d.target is None else d.target
                   for a, d in zip(actuals, out, strict=True)]
        history.append(actuals)
        if history[-1] == history[-2]:
            break
    assert history[-1] == history[-2], f"still moving after {ROUNDS} rounds"
    for _ in range(3):  # and once settled, it stays settled
        again = decide([g.input(a) for g, a in zip(fleet, actuals, strict=True)],
                       host(actuals), policy)
        assert [d.target for d in again] == [None] * len(fleet)
    for i, g in enumerate(fleet):  # no oscillation: each VM turns around at most once
        moves = [b[i] - a[i] for a, b in pairwise(history) if b[i] != a[i]]
        turns = sum(1 for x, y in pairwise(moves) if (x > 0) != (y > 0))
        assert turns <= 1, (g.name, moves)


@settings(max_examples=300, deadline=None)
@given(fleet=st.lists(st.integers(0, 10**6), min_size=1, max_size=6, unique=True).flatmap(
           lambda ids: st.tuples(*(guests(f"vm{i}") for i in ids))),
       actual_at=st.lists(st.floats(0.0, 1.2), min_size=6, max_size=6),
       owned=st.lists(st.booleans(), min_size=6, max_size=6),
       available=mib(0, 32768), psi=st.none() | st.floats(0, 100), policy=POLICIES)
def test_any_input_keeps_the_safety_rules(
    fleet: tuple[Guest, ...], actual_at: list[float], owned: list[bool], available: int,
    psi: float | None, policy: PolicySettings,
) -> None:
    inputs = []
    for g, at, own in zip(fleet, actual_at, owned, strict=False):
        base = g.input(max(HARD_MINIMUM, int(g.ram * at)))
        inputs.append(VmInput(base.state, base.rates, owned=own, policy=base.policy))
    host = HostMemory(total=32 * GiB, available=available * MiB, free=0, cached=0, anon=0,
                      swap_total=0, swap_free=0,
                      psi=None if psi is None else Psi(psi, 0, 0, 0, 0, 0))
    out = decide(inputs, host, policy)
    assert [d.name for d in out] == [g.name for g in fleet]
    for g, vm, d in zip(fleet, inputs, out, strict=False):
        assert d.reason
        actual = vm.state.actual
        assert actual is not None and d.current == actual
        if not vm.owned:
            assert d.action is Action.LEAVE and d.target is None
        floor, ceiling = g.bounds()
        target = actual if d.target is None else d.target
        moved = d.target is not None
        # a target that is sent is within the bounds, and the actions match the direction
        assert not moved or floor <= target <= ceiling
        assert (d.action is Action.SHRINK) == (moved and target < actual)
        assert (d.action is Action.GROW) == (moved and target > actual)
        # a thrashing guest only shrinks when it sits above its maximum
        assert not (g.thrashing and d.action is Action.SHRINK) or actual > ceiling
        # a move is at most a step, unless it restores a bound or meets an emergency
        restoring = actual < floor or actual > ceiling or "emergency" in d.reason
        assert restoring or abs(target - actual) <= policy.max_step
        assert restoring or not moved or abs(target - actual) >= policy.deadband
