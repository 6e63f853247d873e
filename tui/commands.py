"""Every dashboard action once: its key, its title and its help. The main screen's bindings,
the help screen and the command palette are all built from ``ACTIONS``."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from textual.binding import Binding, BindingType
from textual.command import DiscoveryHit, Hit, Hits, Provider

__all__ = ["ACTIONS", "Action", "FleetCommands", "bindings"]


@dataclass(frozen=True, slots=True)
class Action:
    action: str  # a Textual action string on the main screen
    keys: str  # Textual key names, comma separated
    key_display: str
    title: str
    help: str
    palette: bool = True  # offered in the command palette
    footer: bool = True


ACTIONS: tuple[Action, ...] = (
    Action("set_target", "t", "t", "Set target", "Set the balloon target of the selected VM(s)"),
    Action("step(1)", "plus,equals", "+", "Step up", "Raise the target by the step size"),
    Action("step(-1)", "minus", "-", "Step down", "Lower the target by the step size"),
    Action("toggle_hint", "h", "h", "Toggle hint", "Toggle the cache-first hint"),
    Action("enable_stats", "s", "s", "Enable stats", "Turn on guest stats polling"),
    Action("toggle_auto", "A", "A", "Auto on/off", "Switch automatic ballooning on or off "
           "for the selected VMs (no selection: the whole fleet)"),
    Action("reclaim", "R", "R", "Take back", "Take the selected VM(s) back from another "
           "writer: auto manages them again", footer=False),
    Action("toggle_select", "space", "space", "Select", "Select or unselect the VM under the "
           "cursor (actions apply to all selected VMs)", palette=False),
    Action("select_all", "a", "a", "Select all", "Select every VM shown", footer=False),
    Action("clear", "escape", "esc", "Clear", "Clear the selection and the filter",
           footer=False),
    Action("cycle_sort", "o", "o", "Sort", "Sort by the next column"),
    Action("reverse_sort", "r", "r", "Reverse sort", "Reverse the sort order", footer=False),
    Action("filter", "slash", "/", "Filter", "Filter rows by name, state or hint mode"),
    Action("refresh", "ctrl+r", "^r", "Refresh now", "Poll the fleet now", footer=False),
    Action("help", "question_mark,f1", "?", "Help", "Show the keys", palette=False),
)


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
