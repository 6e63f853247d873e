"""The main screen: header totals, filter bar, fleet table, detail pane and event log.

It renders the App's ``FleetView`` and turns keys into request messages for the App; it
never talks to the data source itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static

from balloonctl.errors import SizeError
from balloonctl.host import HostMemory
from balloonctl.units import SizeKind, TargetSpec, format_size
from tui.commands import bindings
from tui.fleetview import FleetView
from tui.messages import EnableStats, SetTargets, ToggleHint
from tui.screens.help import HelpScreen
from tui.screens.target import SetTargetDialog
from tui.targets import TargetPlan, plan_targets
from tui.widgets import DetailPane, EventLog, FleetHeader, FleetTable

__all__ = ["MainScreen"]


class MainScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = bindings()

    def __init__(
        self,
        view: FleetView,
        *,
        step: int,
        stats_interval: int,
        clock: Callable[[], float] = time.time,
        refresh_now: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__()
        self.view = view
        self.step = step
        self.stats_interval = stats_interval
        self._clock = clock
        self._refresh_now = refresh_now
        self._ready = False

    def compose(self) -> ComposeResult:
        yield FleetHeader(id="totals")
        with Horizontal(id="toolbar"):
            yield Input(placeholder="filter (/)", id="filter")
            yield Static(id="status-line")
        yield FleetTable(id="fleet")
        with Horizontal(id="bottom"):
            yield DetailPane(id="detail")
            yield EventLog(clock=self._clock, id="log")
        yield Footer()

    def on_mount(self) -> None:
        # Held once: the App may call in while the screen is being torn down at exit.
        self.table = self.query_one(FleetTable)
        self._header = self.query_one(FleetHeader)
        self._detail = self.query_one(DetailPane)
        self._log = self.query_one(EventLog)
        self._status = self.query_one("#status-line", Static)
        self._ready = True
        self.table.focus()
        self.show_fleet()

    # -- rendering --------------------------------------------------------------------------
    def show_fleet(self) -> None:
        """Redraw from the view (after a snapshot, a sort, a filter or a selection change)."""
        if not self._ready:
            return
        view = self.view
        self.table.show(view.visible(), view.selected)
        self.table.mark_sort(view.sort_key, view.reverse)
        self._header.show(view.totals() if view.rows else None)
        status = f"sort {view.sort_key} {'▼' if view.reverse else '▲'}"
        if view.selected:
            status += f"  selected {len(view.selected)}"
        status += f"  step {format_size(self.step)}"
        self._status.update(status, layout=False)
        self.show_detail()

    def show_detail(self) -> None:
        if not self._ready:
            return
        name = self.table.cursor_vm
        state = None if name is None else self.view.state(name)
        history = None if name is None else self.view.history.get(name)
        self._detail.show(state, history)

    def show_host(self, host: HostMemory | None, error: str | None) -> None:
        if self._ready:
            self._header.show(host=host, host_error=error)

    def show_hosts(self, lines: list[str]) -> None:
        if self._ready:
            self._header.hosts(lines)

    def show_source_error(self, error: str | None) -> None:
        if self._ready:
            self._header.source_error(error)

    def log_line(self, text: str, *, style: str = "") -> None:
        if self._ready:
            self._log.add(text, style=style)

    @on(DataTable.RowHighlighted)
    def _row_highlighted(self) -> None:
        self.show_detail()

    # -- filter -----------------------------------------------------------------------------
    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.view.filter_text = event.value
        self.show_fleet()

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self.table.focus()

    def action_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_clear(self) -> None:
        filt = self.query_one("#filter", Input)
        if filt.has_focus:
            self.table.focus()
            return
        if self.view.selected:
            self.view.selected.clear()
        elif filt.value:
            filt.value = ""
        self.show_fleet()

    # -- selection and sort -----------------------------------------------------------------
    def action_toggle_select(self) -> None:
        name = self.table.cursor_vm
        if name is not None:
            self.view.toggle_selected(name)
            self.show_fleet()

    def action_select_all(self) -> None:
        self.view.selected.update(row.name for row in self.view.visible())
        self.show_fleet()

    def action_cycle_sort(self) -> None:
        self.view.cycle_sort()
        self.show_fleet()

    def action_reverse_sort(self) -> None:
        self.view.reverse = not self.view.reverse
        self.show_fleet()

    def action_refresh(self) -> None:
        self._refresh_now()

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen())

    # -- actions on VMs ---------------------------------------------------------------------
    def _targets(self) -> list[str]:
        names = self.view.targets(self.table.cursor_vm)
        if not names:
            self.notify("No VM selected", severity="warning")
        return names

    def action_set_target(self) -> None:
        names = self._targets()
        if names:
            dialog = SetTargetDialog(self.view.states_of(names))
            self.app.push_screen(dialog, self._send_plan)

    def action_step(self, direction: int) -> None:
        names = self._targets()
        if not names:
            return
        delta = direction * self.step
        text = f"{'+' if delta > 0 else '-'}{format_size(abs(delta), compact=True)}"
        try:
            spec = TargetSpec(SizeKind.RELATIVE, delta, text)
        except SizeError as exc:  # pragma: no cover - a configured step is always valid
            self.notify(str(exc), severity="error")
            return
        self._send_plan(plan_targets(self.view.states_of(names), spec))

    def _send_plan(self, plan: TargetPlan | None) -> None:
        if plan is None:
            return
        for name, why in plan.refused.items():
            self.log_line(f"{name}: target refused: {why}", style="red")
            self.view.note(name, f"refused: {why}")
        if plan.targets:
            # Shown at once (not when the App gets the message), so a key pressed again
            # before the message is handled steps from the new target.
            for name, target in plan.targets.items():
                self.view.target_sent(name, target)
            self.post_message(SetTargets(plan.targets, force=plan.force))
            self.show_fleet()

    def action_toggle_hint(self) -> None:
        states = self.view.states_of(self._targets())
        if states:
            self.post_message(ToggleHint({s.name: not s.hint.enabled for s in states}))

    def action_enable_stats(self) -> None:
        names = self._targets()
        if names:
            self.post_message(EnableStats(names, self.stats_interval))
