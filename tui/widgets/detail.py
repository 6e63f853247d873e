"""The selected VM in detail: limits, features, sparklines of free/cached/actual, recent events."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Label, Sparkline, Static

from balloonctl.model import BalloonState
from balloonctl.policy import Decision
from balloonctl.units import format_duration, format_size
from tui.fleetview import reason
from tui.history import Ring, VmHistory
from tui.targets import floor_of, maximum_of
from tui.widgets.memory_bar import MemoryBar

__all__ = ["DetailPane", "describe"]

_SERIES = ("free", "cached", "actual")


def _flag(value: bool | None) -> str:
    return "?" if value is None else ("on" if value else "off")


def describe(state: BalloonState, plan: Decision | None = None, auto: bool = False) -> Text:
    """The VM's facts as a few lines of text; with auto's ``plan``, its reason."""
    text = Text()
    text.append(state.name, style="bold")
    text.append(f"  {state.status.value}")
    if state.error:
        text.append(f": {reason(state)}", style="red")
    text.append(f"\n{state.qmp}\n", style="dim")
    size = format_size
    text.append(
        f"actual {size(state.actual)}  RAM {size(state.guest_ram)}  "
        f"target {size(state.target)}  floor {size(floor_of(state))}  "
        f"max {size(maximum_of(state))}\n"
    )
    hint = state.hint
    text.append(f"hint {hint.mode.value}")
    if hint.mode.value in ("agent", "device"):
        text.append(" on" if hint.enabled else " off")
    if hint.detail:
        text.append(f" ({hint.detail})", style="dim")
    polling = state.polling_interval
    age = format_duration(state.stats_age)
    text.append(f"  stats every {polling}s, age {age}" if polling else "  stats polling off")
    f = state.features
    text.append(
        f"\ndeflate-on-oom {_flag(f.deflate_on_oom)}  "
        f"free-page-reporting {_flag(f.free_page_reporting)}  "
        f"free-page-hint {_flag(f.free_page_hint)}"
    )
    if state.owner is not None and state.owner.value == "foreign":
        text.append("\nmoved by another writer: auto leaves it alone (R takes it back)",
                    style="yellow")
    if plan is not None:
        text.append(f"\nauto {'on' if auto else 'off'}, plan {plan.action.value}", style="bold")
        if plan.target is not None:
            text.append(f" to {format_size(plan.target)}", style="bold")
        text.append(f": {plan.reason}")
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

    def on_mount(self) -> None:
        # Held once: ``show`` may be called while the app is being torn down at exit.
        self._facts = self.query_one("#detail-facts", Static)
        self._bar = self.query_one(MemoryBar)
        self._labels = {s: self.query_one(f"#label-{s}", Label) for s in _SERIES}
        self._sparks = {s: self.query_one(f"#spark-{s}", Sparkline) for s in _SERIES}
        self._events = self.query_one("#detail-events", Static)
        self._ready = True
        self.show(*self._pending)

    _ready = False
    _pending: tuple[BalloonState | None, VmHistory | None] = (None, None)
    _plan: tuple[Decision | None, bool] = (None, False)

    def show(self, state: BalloonState | None, history: VmHistory | None,
             plan: Decision | None = None, auto: bool = False) -> None:
        self._plan = (plan, auto)
        if not self._ready:
            self._pending = (state, history)
            return
        if state is None:
            self._facts.update("no VM selected", layout=False)
            self._bar.show(None)
        else:
            self._facts.update(describe(state, *self._plan), layout=False)
            self._bar.show(state)
        if state is None or history is None:  # nothing of another VM may stay on show
            for series in _SERIES:
                self._labels[series].update(series, layout=False)
                self._sparks[series].data = []
            self._events.update("", layout=False)
            return
        for series in _SERIES:
            ring: Ring = getattr(history, series)
            values = ring.values()
            latest = format_size(int(values[-1]), compact=True) if values else "-"
            self._labels[series].update(f"{series} {latest}", layout=False)
            self._sparks[series].data = values
        events = Text("recent\n", style="bold")
        for line in list(reversed(history.events))[:3]:
            events.append(f"{line}\n")
        self._events.update(events, layout=False)
