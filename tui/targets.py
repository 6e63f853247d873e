"""Turn what the user typed into per-VM targets, refusing unsafe ones before anything is sent.

The dialog and the step keys share this, so a target is judged the same way whichever way
it was asked for. What is sent is always the resolved absolute size that was validated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from balloonctl.errors import BalloonError, UnsafeTarget
from balloonctl.model import BalloonState, default_floor, validate_target
from balloonctl.units import SizeKind, TargetSpec, format_size, parse_target

__all__ = ["TargetPlan", "absolute", "floor_of", "maximum_of", "plan_targets", "plan_text"]


@dataclass(frozen=True, slots=True)
class TargetPlan:
    """Per-VM resolved targets, and the VMs refused with the reason."""

    targets: dict[str, int] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    force: bool = False

    @property
    def ok(self) -> bool:
        return bool(self.targets) and not self.refused


def absolute(target: int) -> TargetSpec:
    """The spec sent for a target that was already resolved and validated."""
    return TargetSpec(SizeKind.ABSOLUTE, target, format_size(target))


def floor_of(state: BalloonState) -> int | None:
    if state.floor is not None:
        return state.floor
    return None if state.guest_ram is None else default_floor(state.guest_ram)


def maximum_of(state: BalloonState) -> int | None:
    """The highest target allowed: the VM's configured maximum, never above guest RAM."""
    if state.maximum is None or state.guest_ram is None:
        return state.guest_ram if state.maximum is None else state.maximum
    return min(state.maximum, state.guest_ram)


# validate_target speaks to the CLI (--force); on the screen, force is a checkbox.
DIALOG_WORDING = {"use --force to go lower": "tick force to go lower",
                  "even with --force": "even with force"}
STEP_WORDING = {"use --force to go lower": "set it with t and tick force to go lower",
                "even with --force": "even with force"}


def _reworded(message: str, wording: dict[str, str]) -> str:
    for cli, tui in wording.items():
        message = message.replace(cli, tui)
    return message


def plan_targets(
    states: Sequence[BalloonState], spec: TargetSpec, *, force: bool = False,
    wording: dict[str, str] = STEP_WORDING,
) -> TargetPlan:
    """Resolve ``spec`` for each VM and check it with ``validate_target``; refusals are
    worded for the screen with ``wording`` (the step keys' by default)."""
    targets: dict[str, int] = {}
    refused: dict[str, str] = {}
    for state in states:
        if not state.reachable or state.guest_ram is None or state.actual is None:
            refused[state.name] = "not reachable: its size limits are unknown"
            continue
        current = state.target if state.target is not None else state.actual
        try:
            target = spec.resolve(guest_ram=state.guest_ram, current=current)
            validate_target(target, guest_ram=state.guest_ram, minimum=state.floor,
                            maximum=state.maximum, force=force)
        except UnsafeTarget as exc:
            refused[state.name] = _reworded(exc.message, wording)
        except BalloonError as exc:
            refused[state.name] = exc.message
        else:
            targets[state.name] = target
    return TargetPlan(targets, refused, force)


def plan_text(states: Sequence[BalloonState], text: str, *, force: bool = False) -> TargetPlan:
    """Parse the user's text (``1G``, ``75%``, ``+256M``) and plan it for each VM.

    Raises:
        SizeError: the text is not a size the CLI accepts.
    """
    return plan_targets(states, parse_target(text), force=force, wording=DIALOG_WORDING)
