"""The set-target dialog: accepts the CLI's sizes, shows each VM's floor and maximum, and
refuses unsafe values with the reason before anything is sent."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Static

from balloonctl.errors import SizeError
from balloonctl.model import HARD_MINIMUM, BalloonState
from balloonctl.units import format_exact, format_size
from tui.targets import TargetPlan, floor_of, maximum_of, plan_text

__all__ = ["SetTargetDialog", "limits_text"]

_SHOWN = 6  # VMs listed by name in the limits; the rest are counted


def _size(value: int | None) -> str:
    return format_exact(value, with_bytes=False)  # 1.75 GiB, not a rounded 1.8 GiB


def limits_text(states: Sequence[BalloonState]) -> Text:
    text = Text()
    for state in states[:_SHOWN]:
        text.append(f"{state.name:<12}", style="bold")
        text.append(
            f" actual {_size(state.actual)}  floor {_size(floor_of(state))}"
            f"  maximum {_size(maximum_of(state))}\n"
        )
    if len(states) > _SHOWN:
        text.append(f"… and {len(states) - _SHOWN} more\n", style="dim")
    return text


def _verdict(plan: TargetPlan) -> Text:
    text = Text()
    for name, target in list(plan.targets.items())[:_SHOWN]:
        # Exactly what will be sent: ``1.75 GiB (1879048192 bytes)``, never a rounded size.
        text.append(f"{name} → {format_exact(target)}\n", style="green")
    for name, why in plan.refused.items():
        text.append(f"{name}: {why}\n", style="bold red")
    return text


class SetTargetDialog(ModalScreen[TargetPlan | None]):
    """Dismisses with a fully valid ``TargetPlan``, or ``None`` when cancelled."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, states: Sequence[BalloonState]) -> None:
        super().__init__()
        self.states = list(states)

    def compose(self) -> ComposeResult:
        names = [s.name for s in self.states]
        title = names[0] if len(names) == 1 else f"{len(names)} VMs"
        with Vertical(id="target-box"):
            yield Static(f"Set balloon target: {title}", id="target-title")
            yield Static(limits_text(self.states), id="target-limits")
            yield Input(placeholder="1G, 1.5GiB, 2GB, 75%, +256M, -512M", id="target-input")
            yield Checkbox(
                f"force: allow below the floor (never below {format_size(HARD_MINIMUM)})",
                id="target-force",
            )
            yield Static(id="target-verdict")
            with Horizontal(id="target-buttons"):
                yield Button("Set", variant="primary", id="target-set")
                yield Button("Cancel", id="target-cancel")

    def on_mount(self) -> None:
        self.query_one("#target-input", Input).focus()

    def _plan(self) -> TargetPlan | None:
        """The plan for the current input, showing the verdict; None when it does not parse."""
        value = self.query_one("#target-input", Input).value
        force = self.query_one("#target-force", Checkbox).value
        verdict = self.query_one("#target-verdict", Static)
        if not value.strip():
            verdict.update("")
            return None
        try:
            plan = plan_text(self.states, value, force=force)
        except SizeError as exc:
            verdict.update(Text(exc.message, style="bold red"))
            return None
        verdict.update(_verdict(plan))
        return plan

    @on(Input.Changed, "#target-input")
    @on(Checkbox.Changed, "#target-force")
    def _changed(self) -> None:
        self._plan()

    @on(Input.Submitted, "#target-input")
    @on(Button.Pressed, "#target-set")
    def _submit(self) -> None:
        plan = self._plan()
        if plan is None:
            if not self.query_one("#target-input", Input).value.strip():
                self.query_one("#target-verdict", Static).update(
                    Text("enter a size", style="bold red")
                )
            return
        if plan.ok:
            self.dismiss(plan)

    @on(Button.Pressed, "#target-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
