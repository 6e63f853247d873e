"""The main screen: header totals, filter bar, fleet table, detail pane and event log.

It renders the App's ``FleetView`` and turns keys into request messages for the App; it
never talks to the data source itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Horizontal
from textual.events import Resize
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static

from balloonctl.errors import SizeError
from balloonctl.host import HostMemory
from balloonctl.units import SizeKind, TargetSpec, format_size
from tui.commands import bindings
from tui.fleetview import FleetView
from tui.messages import EnableStats, Reclaim, SetTargets, ToggleAuto, ToggleHint
from tui.screens.help import HelpScreen
from tui.screens.target import SetTargetDialog
from tui.targets import TargetPlan, plan_targets
from tui.widgets import DetailPane, EventLog, FleetHeader, FleetTable

if TYPE_CHECKING:
    from balloonctl.http.hosts import HostStatus

__all__ = ["PANEL_MODES", "MainScreen"]

# What the bottom panels show, in the order the panels key cycles through: "both" puts the
# detail pane and the event log side by side (the detail pane alone below WIDE columns).
PANEL_MODES = ("both", "detail", "log", "hidden")
WIDE = 110
PANEL_MIN = 6  # lines (with borders) below which a panel is not worth showing
PANEL_MAX = 18  # lines the panels take at most: a bigger terminal gives the table the rest


class MainScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = bindings()
    # The table, not the first focusable widget (the filter): Textual's auto-focus may
    # run after on_mount, and a focused filter would take q, t, h... as text.
    AUTO_FOCUS = "#fleet"

    def __init__(
        self,
        view: FleetView,
        *,
        step: int,
        stats_interval: int,
        clock: Callable[[], float] = time.time,
        refresh_now: Callable[[], None] = lambda: None,
        sample_every: float = 1.0,
        hosts: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.sample_every = sample_every
        self.hosts = list(hosts)  # several: a host column (see FleetTable)
        self._host_status: list[HostStatus] = []
        self.panels = PANEL_MODES[0]
        self.view = view
        self.step = step
        self.stats_interval = stats_interval
        self._clock = clock
        self._refresh_now = refresh_now
        self._ready = False
        self.auto_status = ""  # "auto on 3/6" when the App offers automatic ballooning

    def compose(self) -> ComposeResult:
        yield FleetHeader(id="totals")
        with Horizontal(id="toolbar"):
            yield Input(placeholder="filter (/)", id="filter")
            yield Static(id="status-line")
        yield FleetTable(hosts=self.hosts, id="fleet")
        with Horizontal(id="bottom"):
            yield DetailPane(sample_every=self.sample_every, id="detail")
            yield EventLog(clock=self._clock, id="log")
        yield Footer()

    def on_mount(self) -> None:
        # Held once: the App may call in while the screen is being torn down at exit.
        self.table = self.query_one(FleetTable)
        self._header = self.query_one(FleetHeader)
        self._detail = self.query_one(DetailPane)
        self._log = self.query_one(EventLog)
        self._status = self.query_one("#status-line", Static)
        self._bottom = self.query_one("#bottom", Horizontal)
        self._ready = True
        self.table.focus()
        self.show_fleet()

    # -- layout -----------------------------------------------------------------------------
    def on_resize(self, event: Resize) -> None:
        self._fit()

    def _fit(self) -> None:
        """Size the table and the bottom panels to the terminal: the table shows every row
        when it can; the panels get what is left (at most ``PANEL_MAX`` lines, at least
        ``PANEL_MIN`` or none), or a share of a terminal too small for both."""
        if not self._ready:
            return
        width, height = self.size
        if not width or not height:
            return
        self.table.fit(width)
        mode = self.panels
        if mode == "both" and width < WIDE:
            mode = "detail"
        self._detail.display = mode in ("both", "detail")
        self._log.display = mode in ("both", "log")
        fixed = self._header.outer_size.height + 2  # the toolbar and the footer
        overflow = 1 if self.table.virtual_size.width > width else 0  # a scrollbar
        rows = self.table.row_count + 1 + overflow
        room = height - fixed
        panels = 0
        if mode != "hidden":
            # The detail pane's own lines decide (the log fills what the pane takes).
            content = self._detail_content()
            self._detail_lines = content
            want = min(PANEL_MAX, room, max(PANEL_MIN + 4, content + 2))
            panels = want if room - rows >= want else max(room - rows, room * 2 // 5)
            panels = min(panels, want)
            if panels < PANEL_MIN:
                panels = 0
        self._bottom.display = panels > 0
        self._bottom.styles.height = panels

    # -- rendering --------------------------------------------------------------------------
    def show_fleet(self) -> None:
        """Redraw from the view (after a snapshot, a sort, a filter or a selection change)."""
        if not self._ready:
            return
        view = self.view
        rows = self.table.row_count
        self.table.show(view.visible(), view.selected)
        if self.table.row_count != rows:
            self._fit()
        self.table.mark_sort(view.sort_key, view.reverse)
        self._header.show(view.totals() if view.rows else None)
        if self._host_status:
            totals = view.host_totals([s.label for s in self._host_status])
            self._header.hosts(list(zip(totals, self._host_status, strict=True)))
        status = f"sort {view.sort_key} {'▼' if view.reverse else '▲'}"
        if view.selected:
            status += f"  selected {len(view.selected)}"
        status += f"  step {format_size(self.step)}"
        if self.auto_status:
            status += f"  {self.auto_status}"
        self._status.update(status, layout=False)
        self.show_detail()

    def show_detail(self) -> None:
        if not self._ready:
            return
        name = self.table.cursor_vm
        state = None if name is None else self.view.state(name)
        history = None if name is None else self.view.history.get(name)
        row = None if name is None else self.view.rows.get(name)
        self._detail.show(state, history, None if row is None else row.plan,
                          row is not None and row.auto)
        self.call_after_refresh(self._refit)

    _detail_lines = -1

    def _refit(self) -> None:
        """Fit again when the detail pane's content changed height (a VM with an error line,
        a wrapped hint detail)."""
        if self._ready and self._detail_content() != self._detail_lines:
            self._fit()

    def _detail_content(self) -> int:
        """Lines the detail pane's content takes (0 when it is not shown)."""
        if not self._detail.display:
            return 0
        return sum(child.outer_size.height for child in self._detail.children if child.display)

    def show_host(self, host: HostMemory | None, error: str | None) -> None:
        if self._ready:
            self._header.show(host=host, host_error=error)

    def show_hosts(self, hosts: Sequence[HostStatus]) -> None:
        """Each host's status (several services): its line shows at the next redraw."""
        self._host_status = list(hosts)

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

    def action_cursor(self, rows: int) -> None:
        if rows > 0:
            self.table.action_cursor_down()
        else:
            self.table.action_cursor_up()

    def action_sort(self, key: str) -> None:
        if key == "host" and not self.view.multi_host:
            self.notify("One host: no host column to sort by", timeout=2)
            return
        self.view.sort_by(key)
        self.show_fleet()

    def action_panels(self) -> None:
        self.panels = PANEL_MODES[(PANEL_MODES.index(self.panels) + 1) % len(PANEL_MODES)]
        self.notify(f"panels: {self.panels}", timeout=2)
        self._fit()

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
        names = self._targets()
        if names:
            on = self.view.hint_wanted(names)  # one state for all, even if they differ now
            self.post_message(ToggleHint(dict.fromkeys(names, on)))

    def action_toggle_auto(self) -> None:
        """Auto on/off for the selection, or for the whole fleet without one; on when it
        is off for any of them."""
        names = sorted(self.view.selected) or None
        rows = [r for r in self.view.rows.values() if names is None or r.name in names]
        self.post_message(ToggleAuto(names, on=not all(r.auto for r in rows)))

    def action_reclaim(self) -> None:
        names = self._targets()
        if names:
            self.post_message(Reclaim(names))

    def action_enable_stats(self) -> None:
        names = self._targets()
        if names:
            self.post_message(EnableStats(names, self.stats_interval))
