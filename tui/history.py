"""Fixed-size history of a VM's numbers for the sparklines.

Every buffer is allocated once at its full size, so a dashboard that runs for hours keeps
the same memory footprint it had after its first poll.
"""

from __future__ import annotations

from array import array
from collections import deque
from dataclasses import dataclass, field

from balloonctl.model import BalloonState

__all__ = ["GAP", "Ring", "VmHistory"]


class Ring:
    """A ring buffer of floats with a fixed capacity."""

    __slots__ = ("_count", "_data", "_next")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._data = array("d", bytes(8 * capacity))
        self._next = 0
        self._count = 0

    @property
    def capacity(self) -> int:
        return len(self._data)

    def __len__(self) -> int:
        return self._count

    def append(self, value: float) -> None:
        self._data[self._next] = value
        self._next = (self._next + 1) % len(self._data)
        self._count = min(self._count + 1, len(self._data))

    def values(self) -> list[float]:
        """Oldest first."""
        if self._count < len(self._data):
            return list(self._data[: self._count])
        return list(self._data[self._next :]) + list(self._data[: self._next])


GAP = float("nan")  # a poll where the value was not known: drawn as a gap


@dataclass(slots=True)
class VmHistory:
    """What the detail pane shows for one VM: one sample per poll round of actual, free and
    cached (``GAP`` where it was unknown: the VM unreachable, no guest report), the guest
    RAM that scales them, and recent events/actions."""

    capacity: int
    free: Ring = field(init=False)
    cached: Ring = field(init=False)
    actual: Ring = field(init=False)
    events: deque[str] = field(init=False)
    guest_ram: int | None = None

    def __post_init__(self) -> None:
        self.free = Ring(self.capacity)
        self.cached = Ring(self.capacity)
        self.actual = Ring(self.capacity)
        self.events = deque(maxlen=12)

    def record(self, state: BalloonState) -> None:
        """Add one poll's sample to every series (the guest's last report for free and
        cached), so the series stay aligned column for column."""
        if state.guest_ram is not None:
            self.guest_ram = state.guest_ram
        known = state.reachable
        actual = state.actual if known else None
        stats = state.stats if known else None
        reported = stats is not None and stats.reported
        free = stats.free_memory if reported and stats is not None else None
        cached = stats.disk_caches if reported and stats is not None else None
        for ring, value in ((self.actual, actual), (self.free, free), (self.cached, cached)):
            ring.append(GAP if value is None else float(value))
