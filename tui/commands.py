"""Every dashboard action once: its key, its title and its help. The main screen's bindings,
the help screen and the command palette are all built from ``ACTIONS``."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from textual.binding import Binding, BindingType
from textual.command import DiscoveryHit, Hit, Hits, Provider

__all__ = ["ACTIONS", "SORT_COLUMNS", "Action", "FleetCommands", "bindings", "sort_help"]


@dataclass(frozen=True, slots=True)
class Action:
    action: str  # a Textual action string on the main screen
    keys: str  # Textual key names, comma separated
    key_display: str
    title: str
    help: str
    palette: bool = True  # offered in the command palette
    footer: bool = True
    in_help: bool = True  # its own row in the help screen (the sort keys share one)


# One direct sort key per sortable column, in the columns' order: 1 VM, 2 state, 3 actual...
SORT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("1", "name", "VM"), ("2", "state", "state"), ("3", "actual", "actual"),
    ("4", "free", "free"), ("5", "cached", "cached"), ("6", "avail", "avail"),
    ("7", "target", "target"), ("8", "ram", "RAM"), ("9", "swap", "swap/s"),
    ("0", "age", "age"),
)

# Help and Quit come first: the footer cuts what does not fit on a narrow terminal.
ACTIONS: tuple[Action, ...] = (
    Action("help", "question_mark,f1", "?", "Help", "Show the keys", palette=False),
    Action("app.quit", "q", "q", "Quit", "Quit (also ctrl+c and f10)", palette=False),
    Action("set_target", "t", "t", "Set target", "Set the balloon target of the selected VM(s)"),
    Action("step(1)", "plus,equals", "+", "Step up", "Raise the target by the step size"),
    Action("step(-1)", "minus", "-", "Step down", "Lower the target by the step size"),
    Action("toggle_hint", "h", "h", "Toggle hint", "Toggle the cache-first hint (a mixed "
           "selection: all on if any is off, else all off)"),
    Action("enable_stats", "s", "s", "Enable stats", "Turn on guest stats polling"),
    Action("toggle_auto", "A", "A", "Auto on/off", "Switch automatic ballooning on or off "
           "for the selected VMs (no selection: the whole fleet)"),
    Action("reclaim", "R", "R", "Take back", "Take the selected VM(s) back from another "
           "writer: auto manages them again", footer=False),
    Action("cursor(1)", "j", "j", "Down", "Move the cursor down (also ↓)", palette=False,
           footer=False),
    Action("cursor(-1)", "k", "k", "Up", "Move the cursor up (also ↑)", palette=False,
           footer=False),
    Action("toggle_select", "space", "space", "Select", "Select or unselect the VM under the "
           "cursor (actions apply to all selected VMs)", palette=False, footer=False),
    Action("select_all", "a", "a", "Select all", "Select every VM shown", footer=False),
    Action("clear", "escape", "esc", "Clear", "Clear the selection and the filter",
           footer=False),
    Action("cycle_sort", "o", "o", "Sort", "Sort by the next column"),
    *(
        Action(f"sort('{key}')", digit, digit, f"Sort by {label}",
               f"Sort by {label} (again: reverse)", footer=False, in_help=False)
        for digit, key, label in SORT_COLUMNS
    ),
    Action("sort('host')", "H", "H", "Sort by host", "Sort by host, then VM (again: "
           "reverse); with several hosts", footer=False),
    Action("reverse_sort", "r", "r", "Reverse sort", "Reverse the sort order", footer=False),
    Action("filter", "slash", "/", "Filter", "Filter rows by what the host, VM, state and "
           "hint cells show"),
    Action("panels", "p", "p", "Panels", "Bottom panels: both (detail and events), detail "
           "only, events only, hidden", footer=False),
    Action("refresh", "ctrl+r", "^r", "Refresh now", "Poll the fleet now", footer=False),
)


def sort_help() -> tuple[str, str]:
    """The help screen's one row for the direct sort keys: (keys, what they do)."""
    keys = f"{SORT_COLUMNS[0][0]} … {SORT_COLUMNS[-1][0]}"
    columns = ", ".join(f"{digit} {label}" for digit, _, label in SORT_COLUMNS)
    return keys, f"Sort by a column ({columns}); the same key again reverses"


def bindings() -> list[BindingType]:
    return [
        Binding(a.keys, a.action, a.title, show=a.footer, key_display=a.key_display)
        for a in ACTIONS
    ]


class FleetCommands(Provider):
    """The dashboard's actions in the command palette, applied to the screen it opened over."""

    def _actions(self) -> list[Action]:
        return [a for a in ACTIONS if a.palette]

    async def discover(self) -> Hits:
        for a in self._actions():
            yield DiscoveryHit(a.title, partial(self.screen.run_action, a.action), help=a.help)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for a in self._actions():
            score = matcher.match(a.title)
            if score > 0:
                yield Hit(
                    score,
                    matcher.highlight(a.title),
                    partial(self.screen.run_action, a.action),
                    help=a.help,
                )
