"""A sparkline on a fixed scale: one column per sample, gaps where a sample is unknown.

Textual's ``Sparkline`` scales each series between its own minimum and maximum and
summarises many samples into a column, so a flat line at 1.9 GiB looks like one at 0 and
a gap cannot be seen. Here the scale is fixed (0 to the guest's RAM) and each column is
one poll.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.text import Text
from textual.widgets import Static

__all__ = ["BLOCKS", "FixedSparkline", "spark"]

BLOCKS = "▁▂▃▄▅▆▇█"


def spark(values: Sequence[float], scale: float | None, width: int) -> str:
    """The newest ``width`` samples, one column each, newest at the right edge (padded
    with spaces on the left). A sample is drawn as ``BLOCKS[i]`` with ``i`` its eighth of
    ``scale`` (0 is the lowest block, ``scale`` and above the full one); an unknown (NaN)
    sample, or any sample without a scale, is a space."""
    if width <= 0:
        return ""
    shown = list(values)[-width:]
    cells = []
    for value in shown:
        if scale is None or scale <= 0 or math.isnan(value):
            cells.append(" ")
        else:
            # Eighths of (0, scale]: a full block is the whole scale, the lowest one is
            # anything up to an eighth (zero included).
            level = math.ceil(value / scale * len(BLOCKS)) - 1
            level = min(len(BLOCKS) - 1, max(0, level))
            cells.append(BLOCKS[level])
    return " " * (width - len(shown)) + "".join(cells)


class FixedSparkline(Static):
    """``show(values, scale)``; redrawn at its new width when resized."""

    _values: Sequence[float] = ()
    _scale: float | None = None

    def show(self, values: Sequence[float], scale: float | None) -> None:
        self._values, self._scale = values, scale
        self._draw()

    def on_resize(self) -> None:
        self._draw()

    def _draw(self) -> None:
        width = self.content_size.width
        self.update(Text(spark(self._values, self._scale, width), style="cyan"), layout=False)

    @property
    def data(self) -> Sequence[float]:
        return self._values
