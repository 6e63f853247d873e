"""The keys, listed from the same table the bindings and the command palette use."""

from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from tui.commands import ACTIONS, sort_help

__all__ = ["HelpScreen", "keys_table"]


_KEY_NAMES = {"plus": "+", "equals": "=", "minus": "-", "slash": "/", "question_mark": "?",
              "escape": "esc", "ctrl+r": "^r"}


def keys_text(keys: str) -> str:
    """Every key of a binding (``plus,equals`` -> ``+ / =``), as the user types them."""
    return " / ".join(_KEY_NAMES.get(key, key) for key in keys.split(","))


def keys_table() -> Table:
    table = Table(box=None, show_header=False, padding=(0, 2, 0, 0))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    for a in ACTIONS:
        if a.in_help:
            table.add_row(keys_text(a.keys), a.help)
    table.add_row(*sort_help())
    table.add_row("ctrl+c / f10", "Quit")
    table.add_row("ctrl+p", "Command palette (every action above by name)")
    return table


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark,f1", "dismiss", "Close")
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Static("balloonctl dashboard: keys", id="help-title")
            yield Static(keys_table(), id="help-keys")
            yield Static(
                "Actions apply to the selected VMs (space), or to the VM under the cursor.",
                id="help-note",
            )
