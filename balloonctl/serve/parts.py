"""What the service shares with its API, its metrics and the auto controller: the errors it
adds to the tree's (``Conflict``, ``Unavailable``), the ``AutoControl`` protocol, and its
own health counters."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from balloonctl.errors import BalloonError
from balloonctl.policy import Decision

__all__ = ["POLL_BUCKETS", "AutoControl", "Conflict", "ServeHealth", "Unavailable"]

# Upper bounds (seconds) of the poll-duration histogram's buckets, +Inf last.
POLL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))


class Conflict(BalloonError):
    """The request is well formed but clashes with the VM's state (HTTP 409)."""


class Unavailable(BalloonError):
    """The service cannot do this now or in this build (HTTP 503)."""


class AutoControl(Protocol):
    """What the service needs from the automatic-ballooning controller (``balloonctl.auto``).

    ``run_cycle`` decides and applies one round (journaling its changes) and returns the
    decisions; the service calls it every ``PolicySettings.cycle`` seconds while ``enabled``.
    """

    @property
    def enabled(self) -> bool: ...

    def enable(self, on: bool) -> None: ...

    async def run_cycle(self) -> Sequence[Decision]: ...


@dataclass(slots=True)
class ServeHealth:
    """The service's own counters (``/metrics`` exports them)."""

    polls: int = 0
    poll_buckets: list[int] = field(default_factory=lambda: [0] * len(POLL_BUCKETS))
    poll_seconds_sum: float = 0.0
    errors: dict[tuple[str, str], int] = field(default_factory=dict)  # (where, kind) -> count
    auto_decisions: dict[str, int] = field(default_factory=dict)  # action -> count
    foreign_writes: dict[str, int] = field(default_factory=dict)  # vm -> count
    stream_dropped: int = 0

    def observe_poll(self, seconds: float) -> None:
        self.poll_seconds_sum += seconds
        for i, bound in enumerate(POLL_BUCKETS):
            if seconds <= bound:
                self.poll_buckets[i] += 1

    def error(self, where: str, kind: str) -> None:
        self.errors[where, kind] = self.errors.get((where, kind), 0) + 1
