"""The selected VM in detail: limits, features, sparklines of actual/free/cached, recent events."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Label, Static

from balloonctl.model import BalloonState, split_host_name
from balloonctl.policy import Decision
from balloonctl.units import format_duration, format_exact, format_size, format_size_aligned
from tui.fleetview import hint_text, reason
from tui.history import Ring, VmHistory
from tui.targets import floor_of, maximum_of
from tui.widgets.memory_bar import MemoryBar
from tui.widgets.sparkline import FixedSparkline

__all__ = ["DetailPane", "describe"]

_SERIES = ("actual", "free", "cached")


def _flag(value: bool | None) -> str:
    return "?" if value is None else ("on" if value else "off")


def describe(state: BalloonState, plan: Decision | None = None, auto: bool = False) -> Text:
    """The VM's facts, a few short lines (each wraps in a narrow pane, none is cut); with
    auto's ``plan``, its reason."""
    def size(value: int | None) -> str:
        return format_exact(value, with_bytes=False)

    text = Text()
    host, vm = split_host_name(state.name)
    text.append(vm, style="bold")
    if host is not None:
        text.append(" on host ", style="dim")
        text.append(host, style="bold")
    text.append(f"  {state.status.value}  ")
    text.append(state.qmp, style="dim")
    if state.error:
        text.append(f"\n{reason(state)}", style="red")
    text.append(
        f"\nactual {size(state.actual)}  RAM {size(state.guest_ram)}  "
        f"target {size(state.target)}"
        f"\nfloor {size(floor_of(state))}  max {size(maximum_of(state))}  "
    )
    polling = state.polling_interval
    age = format_duration(state.stats_age)
    text.append(f"stats every {polling}s, age {age}" if polling else "stats polling off")
    text.append(f"\ncache-first hint {hint_text(state)}")
    if state.hint.method is not None:
        text.append(f", method {state.hint.method.value}")
    if state.hint.detail:
        text.append(f": {state.hint.detail}", style="dim")
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
            text.append(f" to {size(plan.target)}", style="bold")
        text.append(f": {plan.reason}")
    return text


class DetailPane(VerticalScroll):
    """Shows one VM; ``show`` is called with fresh data after every snapshot.

    ``sample_every`` (seconds between polls) is what one sparkline column stands for."""

    def __init__(self, *, sample_every: float = 1.0, id: str | None = None) -> None:
        super().__init__(id=id)
        self.sample_every = sample_every

    def compose(self) -> ComposeResult:
        yield Static(id="detail-facts")
        yield MemoryBar(id="detail-bar")
        for series in _SERIES:
            with Horizontal(classes="spark-row"):
                yield Label(series, id=f"label-{series}", classes="spark-label")
                yield FixedSparkline(id=f"spark-{series}")
        yield Static(id="detail-events")

    def on_mount(self) -> None:
        # Held once: ``show`` may be called while the app is being torn down at exit.
        self._facts = self.query_one("#detail-facts", Static)
        self._bar = self.query_one(MemoryBar)
        self._labels = {s: self.query_one(f"#label-{s}", Label) for s in _SERIES}
        self._sparks = {s: self.query_one(f"#spark-{s}", FixedSparkline) for s in _SERIES}
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
        self.border_title = "detail" if state is None else f"detail: {state.name}"
        if state is None:
            self._facts.update("no VM selected")
            self._bar.show(None)
        else:
            self._facts.update(describe(state, *self._plan))
            self._bar.show(state)
        if state is None or history is None:  # nothing of another VM may stay on show
            self.border_subtitle = ""
            for series in _SERIES:
                self._labels[series].update(series, layout=False)
                self._sparks[series].show([], None)
            self._events.update("")
            return
        scale = history.guest_ram
        self.border_subtitle = (
            f"a column per poll ({self.sample_every:g}s), scale 0–{format_size(scale)}"
        )
        for series in _SERIES:
            ring: Ring = getattr(history, series)
            values = ring.values()
            latest = values[-1] if values else float("nan")
            shown = "-" if latest != latest else format_size_aligned(int(latest))
            self._labels[series].update(f"{series} {shown}", layout=False)
            self._sparks[series].show(values, scale)
        events = Text()
        for line in list(reversed(history.events))[:3]:
            events.append(f"\n{line}")
        self._events.update(events if events else "")
