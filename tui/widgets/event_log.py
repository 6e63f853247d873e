"""Recent state changes, events and action results, newest at the bottom, bounded;
long lines wrap."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.text import Text
from textual.widgets import RichLog

__all__ = ["EventLog"]


class EventLog(RichLog):
    """A ``RichLog`` keeping at most ``max_lines`` lines, each stamped with the clock's time."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        max_lines: int = 200,
        id: str | None = None,
    ) -> None:
        super().__init__(max_lines=max_lines, wrap=True, markup=False, min_width=20, id=id)
        self._clock = clock
        self.border_title = "events"

    def add(self, text: str, *, style: str = "") -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(self._clock()))
        self.write(Text.assemble((stamp + " ", "dim"), (text, style)))
