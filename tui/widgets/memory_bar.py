"""A compact bar of a VM's memory: free / cached / used / ballooned, in proportion to guest RAM."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from balloonctl.model import BalloonState
from balloonctl.units import format_size
from tui.fleetview import guest_free_cached

__all__ = ["SEGMENTS", "MemoryBar", "memory_bar", "segments"]

# (name, glyph, style); glyphs differ too so the bar reads without colour.
SEGMENTS: tuple[tuple[str, str, str], ...] = (
    ("free", "█", "green"),
    ("cached", "▓", "cyan"),
    ("used", "▒", "yellow"),
    ("ballooned", "░", "magenta"),
)


def segments(state: BalloonState) -> dict[str, int] | None:
    """Bytes per segment, or None when guest RAM is unknown. Without guest stats, the
    memory the guest keeps is shown as used."""
    ram, actual = state.guest_ram, state.actual
    if ram is None or actual is None or ram <= 0:
        return None
    actual = min(actual, ram)
    free, cached = guest_free_cached(state)
    return {
        "free": free,
        "cached": cached,
        "used": actual - free - cached,
        "ballooned": ram - actual,
    }


def _cells(parts: dict[str, int], width: int) -> dict[str, int]:
    """Share ``width`` cells in proportion (largest remainder), summing exactly to width."""
    total = sum(parts.values())
    if total <= 0:
        return dict.fromkeys(parts, 0)
    exact = {k: v * width / total for k, v in parts.items()}
    cells = {k: int(x) for k, x in exact.items()}
    spare = width - sum(cells.values())
    for key in sorted(exact, key=lambda k: exact[k] - cells[k], reverse=True)[:spare]:
        cells[key] += 1
    return cells


def memory_bar(state: BalloonState, width: int = 16) -> Text:
    """The bar as rich Text, ``width`` cells wide."""
    parts = segments(state)
    if parts is None:
        return Text("·" * width, style="dim")
    cells = _cells(parts, width)
    text = Text()
    for name, glyph, style in SEGMENTS:
        text.append(glyph * cells[name], style=style)
    return text


def legend(state: BalloonState) -> Text:
    """The bar's segments in words, sizes through units.format_size."""
    parts = segments(state)
    text = Text()
    if parts is None:
        return text
    for name, glyph, style in SEGMENTS:
        text.append(f"{glyph} ", style=style)
        text.append(f"{name} {format_size(parts[name], compact=True)}  ")
    return text


class MemoryBar(Static):
    """The bar with its legend, for the detail pane."""

    def show(self, state: BalloonState | None) -> None:
        if state is None:
            self.update("")
            return
        width = max(8, min(64, (self.content_size.width or 42) - 2))
        # With layout: the legend wraps to a second line in a narrow pane.
        self.update(Text.assemble(memory_bar(state, width), "\n", legend(state)))
