"""An overall time limit for everything one command does with one VM (``--timeout``).

A ``Deadline`` is handed down to the QMP session and the guest agent client, which bound
each wait by what is left of it, so a VM that answers every command just under the
per-command timeout is still cut off when the whole operation's time is up.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Deadline"]


class Deadline:
    """``seconds`` from now (by ``clock``, ``time.monotonic`` like asyncio's loop)."""

    def __init__(self, seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.total = seconds
        self._clock = clock
        self.at = clock() + seconds

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.at - self._clock())

    def bound(self, timeout: float) -> tuple[float, bool]:
        """``timeout`` cut to what is left; and whether the deadline is what limits it."""
        left = self.remaining()
        return (left, True) if left < timeout else (timeout, False)

    def describe(self) -> str:
        """How an error names it: "the overall limit of 3s for this VM (--timeout)"."""
        return f"the overall limit of {self.total:g}s for this VM (--timeout)"

    def __repr__(self) -> str:
        return f"<Deadline {self.total:g}s, {self.remaining():.3f}s left>"
