"""What the policy takes and gives: ``VmInput`` (with ``VmRates``, computed by
``rates_between`` from two snapshots) in, ``Decision`` out."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from balloonctl.model import BalloonState, seconds_between
from balloonctl.policy.settings import VmPolicy

__all__ = ["Action", "Decision", "VmInput", "VmRates", "rates_between"]


@dataclass(frozen=True, slots=True)
class VmRates:
    """A guest's pressure since the previous cycle; ``None`` when not known."""

    swap_in: float | None = None  # bytes/s
    major_faults: float | None = None  # faults/s


def rates_between(previous: BalloonState, current: BalloonState) -> VmRates:
    """Swap-in and major-fault rates between two snapshots of one VM, over the guest's own
    report times (``last_update``; ``seconds_between``: two different samples stamped with
    the same second count as one second apart). A rate is ``None`` when either snapshot
    lacks the counter, the guest did not report in between, or the counter went back (the
    guest rebooted)."""
    a, b = previous.stats, current.stats
    if a is None or b is None or not a.reported or not b.reported:
        return VmRates()
    seconds = seconds_between(a, b)
    if seconds is None:
        return VmRates()

    def rate(old: int | None, new: int | None) -> float | None:
        if old is None or new is None or new < old:
            return None
        return (new - old) / seconds

    return VmRates(swap_in=rate(a.swap_in, b.swap_in),
                   major_faults=rate(a.major_faults, b.major_faults))


@dataclass(frozen=True, slots=True)
class VmInput:
    """One VM for ``decide``: its snapshot, its rates since the last cycle, whether
    balloonctl owns its target (False: another writer moved it), whether its qga answers
    (``None``: not checked), and its overrides (``None``: ``settings.vms[name]``)."""

    state: BalloonState
    rates: VmRates = field(default_factory=VmRates)
    owned: bool = True
    qga_reachable: bool | None = None
    policy: VmPolicy | None = None


class Action(enum.StrEnum):
    LEAVE = "leave"  # not managed this cycle: nothing is sent
    HOLD = "hold"  # managed, no change: nothing is sent
    SHRINK = "shrink"  # a lower target (the balloon inflates)
    GROW = "grow"  # a higher target (the balloon deflates)


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's word on one VM: ``target`` is what to set (``None``: send nothing),
    ``current`` the balloon's actual size it was decided from."""

    name: str
    action: Action
    target: int | None
    current: int | None
    reason: str

    @property
    def changed(self) -> bool:
        return self.target is not None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "action": self.action.value, "target": self.target,
                "current": self.current, "reason": self.reason}
