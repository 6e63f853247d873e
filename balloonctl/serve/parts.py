"""What the service shares with its API, its metrics and the auto controller: the errors it
adds to the tree's (``Conflict``, ``Unavailable``), the ``AutoControl`` protocol, and its
own health counters."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from balloonctl.errors import BalloonError

if TYPE_CHECKING:
    from balloonctl.auto import Cycle

__all__ = ["POLL_BUCKETS", "AutoControl", "Conflict", "ServeHealth", "Unavailable"]

# Upper bounds (seconds) of the poll-duration histogram's buckets, +Inf last.
POLL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))


class Conflict(BalloonError):
    """The request is well formed but clashes with the VM's state (HTTP 409)."""


class Unavailable(BalloonError):
    """The service cannot do this now or in this build (HTTP 503)."""


class AutoControl(Protocol):
    """What the service needs from the automatic-ballooning controller
    (``balloonctl.auto.AutoController`` is one).

    ``enabled`` is the switch: None applies decisions to every VM, an empty set to none
    (``/v1/auto`` sets one or the other). ``cycle`` snapshots, decides, applies and journals
    one round (raising ``JournalError`` rather than run unrecorded); the service calls it
    every ``PolicySettings.cycle`` seconds while any VM is enabled. ``reclaim`` takes VMs
    back from other writers (True for each that was marked foreign; nothing is sent).
    """

    enabled: set[str] | None

    async def cycle(self) -> Cycle: ...

    async def reclaim(self, names: Collection[str]) -> dict[str, bool | BalloonError]: ...


@dataclass(slots=True)
class ServeHealth:
    """The service's own counters (``/metrics`` exports them)."""

    polls: int = 0
    poll_buckets: list[int] = field(default_factory=lambda: [0] * len(POLL_BUCKETS))
    poll_seconds_sum: float = 0.0
    errors: dict[tuple[str, str], int] = field(default_factory=dict)  # (where, kind) -> count
    auto_cycles: int = 0
    auto_decisions: dict[str, int] = field(default_factory=dict)  # action -> count
    auto_changes: dict[str, int] = field(default_factory=dict)  # action -> targets sent
    foreign_writes: dict[str, int] = field(default_factory=dict)  # vm -> count
    stream_dropped: int = 0

    def observe_poll(self, seconds: float) -> None:
        self.poll_seconds_sum += seconds
        for i, bound in enumerate(POLL_BUCKETS):
            if seconds <= bound:
                self.poll_buckets[i] += 1

    def observe_cycle(self, cycle: Cycle) -> None:
        """Count one auto cycle: its decisions and the targets it sent, by action."""
        self.auto_cycles += 1
        for d in cycle.decisions:
            key = d.action.value
            self.auto_decisions[key] = self.auto_decisions.get(key, 0) + 1
        for c in cycle.applied:
            key = c.action.value
            self.auto_changes[key] = self.auto_changes.get(key, 0) + 1

    def error(self, where: str, kind: str) -> None:
        self.errors[where, kind] = self.errors.get((where, kind), 0) + 1
