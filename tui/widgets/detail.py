"""The selected VM in detail: limits, features, sparklines of free/cached/actual, recent events."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Label, Sparkline, Static

from balloonctl.model import BalloonState
from balloonctl.units import format_duration, format_size
from tui.fleetview import reason
from tui.history import Ring, VmHistory
from tui.targets import floor_of
from tui.widgets.memory_bar import MemoryBar

__all__ = ["DetailPane", "describe"]

_SERIES = ("free", "cached", "actual")


def _flag(value: bool | None) -> str:
    return "?" if value is None else ("on" if value else "off")


def describe(state: BalloonState) -> Text:
    """The VM's facts as a few lines of text."""
    text = Text()
    text.append(state.name, style="bold")
    text.append(f"  {state.status.value}")
    if state.error:
        text.append(f": {reason(state)}", style="red")
    text.append(f"\n{state.qmp}\n", style="dim")
    size = format_size
    text.append(
        f"actual {size(state.actual)}  RAM {size(state.guest_ram)}  "
        f"target {size(state.target)}\n"
        f"floor {size(floor_of(state))}  maximum {size(state.guest_ram)}\n"
    )
    hint = state.hint
    text.append(f"hint {hint.mode.value} {'on' if hint.enabled else 'off'}")
    if hint.detail:
        text.append(f" ({hint.detail})", style="dim")
    polling = state.polling_interval
    text.append(
        f"\nstats every {polling}s, age {format_duration(state.stats_age)}"
        if polling
        else "\nstats polling off"
    )
    f = state.features
    text.append(
        f"\ndeflate-on-oom {_flag(f.deflate_on_oom)}  "
        f"free-page-reporting {_flag(f.free_page_reporting)}"
    )
    return text


class DetailPane(VerticalScroll):
    """Shows one VM; ``show`` is called with fresh data after every snapshot."""

    def compose(self) -> ComposeResult:
        yield Static(id="detail-facts")
        yield MemoryBar(id="detail-bar")
        for series in _SERIES:
            with Horizontal(classes="spark-row"):
                yield Label(series, id=f"label-{series}", classes="spark-label")
                yield Sparkline([], id=f"spark-{series}", summary_function=max)
        yield Static(id="detail-events")

    def show(self, state: BalloonState | None, history: VmHistory | None) -> None:
        facts = self.query_one("#detail-facts", Static)
        if state is None:
            facts.update("no VM selected")
            self.query_one(MemoryBar).show(None)
            return
        facts.update(describe(state))
        self.query_one(MemoryBar).show(state)
        if history is None:
            return
        for series in _SERIES:
            ring: Ring = getattr(history, series)
            values = ring.values()
            label = self.query_one(f"#label-{series}", Label)
            latest = format_size(int(values[-1]), compact=True) if values else "-"
            label.update(f"{series} {latest}")
            self.query_one(f"#spark-{series}", Sparkline).data = values
        events = Text("recent\n", style="bold")
        for line in reversed(history.events):
            events.append(f"{line}\n", style="")
        self.query_one("#detail-events", Static).update(events)
