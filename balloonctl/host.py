"""The host's memory: ``/proc/meminfo``, ``/proc/pressure/memory`` and KSM.

The simulated host of the fake fleet is read through the same functions (it writes files in
the same formats), so ``plan``, ``auto``, ``status`` and the dashboard cannot tell them apart.
All sizes are ``int`` bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HostMemory", "Ksm", "Psi"]


@dataclass(frozen=True, slots=True)
class Psi:
    """``/proc/pressure/memory``: share of time (percent, 0..100) some / all tasks stalled."""

    some_avg10: float
    some_avg60: float
    some_avg300: float
    full_avg10: float
    full_avg60: float
    full_avg300: float


@dataclass(frozen=True, slots=True)
class Ksm:
    """``/sys/kernel/mm/ksm``: whether it runs and how many pages it merged."""

    run: bool
    pages_shared: int
    pages_sharing: int
    page_size: int = 4096

    @property
    def saved(self) -> int:
        """Bytes saved by merging: about ``pages_sharing`` pages."""
        return self.pages_sharing * self.page_size


@dataclass(frozen=True, slots=True)
class HostMemory:
    """One reading of the host's memory.

    ``source`` names where it was read (``/proc`` or a simulated host's directory).
    """

    total: int
    available: int
    free: int
    cached: int
    anon: int
    swap_total: int
    swap_free: int
    psi: Psi | None = None
    ksm: Ksm | None = None
    source: str = "/proc"

    @property
    def available_fraction(self) -> float:
        return self.available / self.total if self.total > 0 else 0.0
