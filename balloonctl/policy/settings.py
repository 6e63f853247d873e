"""The policy's settings: ``PolicySettings`` (the ``[policy]`` table of the config) and
``VmPolicy`` (per-VM overrides from ``[vm.NAME]``), each checked when built."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from balloonctl.errors import UsageError
from balloonctl.model import VmRef
from balloonctl.units import MiB, format_size

__all__ = ["PolicySettings", "VmPolicy", "policy_for"]


def _check(name: str, value: object, *, integer: bool, zero_ok: bool,
           high: float | None = None) -> None:
    """Raises: UsageError naming ``name`` when ``value`` is not a finite number (an integer
    when ``integer``) that is above zero (or zero, when ``zero_ok``) and below ``high``."""
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
        raise UsageError(f"{name}: expected {'an integer' if integer else 'a number'}, "
                         f"got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise UsageError(f"{name}: must be a finite number, got {value!r}")
    if number < 0 or (number == 0 and not zero_ok):
        bound = "zero or more" if zero_ok else "greater than zero"
        raise UsageError(f"{name}: must be {bound}, got {value!r}")
    if high is not None and number >= high:
        raise UsageError(f"{name}: must be below {high:g}, got {value!r}")


@dataclass(frozen=True, slots=True)
class VmPolicy:
    """Per-VM overrides of the settings; ``None`` takes the VM's state or the default."""

    minimum: int | None = None
    maximum: int | None = None
    shares: int | None = None
    free_reserve: int | None = None
    cache_reserve: int | None = None

    def check(self, where: str) -> None:
        """Raises: UsageError naming ``where.setting`` for a wrong value."""
        for key in ("minimum", "maximum", "shares", "free_reserve"):
            value = getattr(self, key)
            if value is not None:
                _check(f"{where}.{key}", value, integer=True, zero_ok=False)
        if self.cache_reserve is not None:
            _check(f"{where}.cache_reserve", self.cache_reserve, integer=True, zero_ok=True)
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise UsageError(f"{where}: minimum ({format_size(self.minimum)}) is above maximum "
                             f"({format_size(self.maximum)})")


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """The policy's settings; the defaults suit a laptop-sized host with no config at all.

    Sizes are bytes, rates per second, fractions of host RAM, percentages 0..100. The names
    are the keys of the config's ``[policy]`` table; ``vms`` holds ``[vm.NAME]`` overrides.

    Raises:
        UsageError: a wrong value, naming the setting.
    """

    target_available: float = 0.15  # keep this share of host RAM available
    hysteresis: float = 0.05  # give back only above target + this
    deadband: int = 16 * MiB  # skip smaller moves
    max_step: int = 128 * MiB  # largest move per VM per cycle
    cycle: float = 10.0  # seconds between decisions (for ``auto``)
    stale_after: float = 30.0  # stats older than this leave the VM alone
    emergency_free: int = 64 * MiB  # guest available below this: deflate at once
    free_reserve: int = 256 * MiB  # never take a guest's free memory below this
    cache_reserve: int = 128 * MiB  # with the hint on, leave this much page cache
    swap_in_rate: int = 1 * MiB  # bytes/s of guest swap-in that count as thrashing
    fault_rate: float = 100.0  # guest major faults/s that count as thrashing
    psi_threshold: float = 10.0  # host PSI some avg10 (%) above this is pressure
    shares: int = 1000
    auto: bool = False  # balloonctl serve applies the policy from the start
    vms: Mapping[str, VmPolicy] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check("target_available", self.target_available, integer=False, zero_ok=False,
               high=1)
        _check("hysteresis", self.hysteresis, integer=False, zero_ok=True, high=1)
        if self.target_available + self.hysteresis >= 1:
            raise UsageError("hysteresis: target_available + hysteresis must stay below 1")
        _check("deadband", self.deadband, integer=True, zero_ok=True)
        for key in ("max_step", "emergency_free", "free_reserve", "swap_in_rate", "shares"):
            _check(key, getattr(self, key), integer=True, zero_ok=key == "swap_in_rate")
        _check("cache_reserve", self.cache_reserve, integer=True, zero_ok=True)
        _check("cycle", self.cycle, integer=False, zero_ok=False)
        _check("stale_after", self.stale_after, integer=False, zero_ok=False)
        _check("fault_rate", self.fault_rate, integer=False, zero_ok=True)
        _check("psi_threshold", self.psi_threshold, integer=False, zero_ok=True, high=100)
        if self.deadband > self.max_step:
            raise UsageError(f"deadband ({format_size(self.deadband)}) is above max_step "
                             f"({format_size(self.max_step)}): nothing would ever move")
        for name, vm in self.vms.items():
            vm.check(f"vm.{name}")
            reserve = self.free_reserve if vm.free_reserve is None else vm.free_reserve
            if reserve <= self.emergency_free:
                where = "free_reserve" if vm.free_reserve is None else f"vm.{name}.free_reserve"
                raise UsageError(f"{where} ({format_size(reserve)}) must be above "
                                 f"emergency_free ({format_size(self.emergency_free)})")
        if self.free_reserve <= self.emergency_free:
            raise UsageError(f"emergency_free ({format_size(self.emergency_free)}) must be below "
                             f"free_reserve ({format_size(self.free_reserve)})")


def policy_for(ref: VmRef, settings: PolicySettings) -> VmPolicy:
    """A VM's overrides: the inventory's minimum, maximum and shares (config defaults and its
    ``[vm.NAME]`` table already merged) with the reserves of ``settings.vms``."""
    own = settings.vms.get(ref.name, VmPolicy())
    return VmPolicy(
        minimum=ref.minimum if ref.minimum is not None else own.minimum,
        maximum=ref.maximum if ref.maximum is not None else own.maximum,
        shares=ref.shares if own.shares is None else own.shares,
        free_reserve=own.free_reserve,
        cache_reserve=own.cache_reserve,
    )


