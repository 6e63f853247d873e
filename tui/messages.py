"""Typed messages: workers report results with these, screens ask for actions with these."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from textual.message import Message

from balloonctl.host import HostMemory
from balloonctl.model import BalloonState

if TYPE_CHECKING:
    from balloonctl.auto import Cycle
    from balloonctl.qmp import BalloonEvent

__all__ = [
    "ActionDone",
    "AutoCycleDone",
    "AutoStopped",
    "EnableStats",
    "HostMemoryRead",
    "Reclaim",
    "SetTargets",
    "SnapshotReady",
    "SourceEvent",
    "SourceFailed",
    "StateReady",
    "ToggleAuto",
    "ToggleHint",
]


# -- results from the App's workers ----------------------------------------------------------
class SnapshotReady(Message):
    """A fresh snapshot of the fleet. A newer one replaces an unprocessed older one."""

    def __init__(self, states: Sequence[BalloonState], poll_round: int | None = None) -> None:
        super().__init__()
        self.states = list(states)
        self.poll_round = poll_round  # which poll (numbered from 1 as they start)

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, SnapshotReady)


class StateReady(Message):
    """Some VMs' states from a source that reports each VM as it is read (``snapshot_each``),
    batched as they arrive. Never replaced: every VM's state counts. ``SnapshotReady`` (with
    the round's last states) ends the round."""

    def __init__(self, states: Sequence[BalloonState], poll_round: int) -> None:
        super().__init__()
        self.states = list(states)
        self.poll_round = poll_round


class SourceFailed(Message):
    """The data source could not produce a snapshot at all; the next try is in ``retry_in``."""

    def __init__(self, error: str, kind: str, retry_in: float) -> None:
        super().__init__()
        self.error = error
        self.kind = kind
        self.retry_in = retry_in


class HostMemoryRead(Message):
    """The host's /proc/meminfo was read (``host`` is None with ``error`` when it failed)."""

    def __init__(self, host: HostMemory | None, error: str | None = None) -> None:
        super().__init__()
        self.host = host
        self.error = error

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, HostMemoryRead)


class SourceEvent(Message):
    """An event from the source (hold mode): a QEMU event such as BALLOON_CHANGE, or the
    source's own connect/disconnect notes. Like QEMU's rate limit, a newer BALLOON_CHANGE
    of the same VM replaces one not yet handled."""

    def __init__(self, name: str, event: BalloonEvent) -> None:
        super().__init__()
        self.name = name
        self.event = event

    def can_replace(self, message: Message) -> bool:
        return (
            isinstance(message, SourceEvent)
            and message.name == self.name
            and message.event.name == self.event.name == "BALLOON_CHANGE"
        )


class AutoCycleDone(Message):
    """Automatic ballooning ran a cycle: its plan (every VM) and what it sent."""

    def __init__(self, cycle: Cycle) -> None:
        super().__init__()
        self.cycle = cycle


class AutoStopped(Message):
    """Automatic ballooning stopped for everyone (the journal cannot be written)."""

    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class ActionDone(Message):
    """One action on one VM finished; ``ok`` False means ``detail`` is the reason."""

    def __init__(self, action: str, name: str, ok: bool, detail: str) -> None:
        super().__init__()
        self.action = action
        self.name = name
        self.ok = ok
        self.detail = detail


# -- requests from screens to the App --------------------------------------------------------
class SetTargets(Message):
    """Send these already validated absolute targets."""

    def __init__(self, targets: dict[str, int], *, force: bool = False) -> None:
        super().__init__()
        self.targets = targets
        self.force = force


class ToggleHint(Message):
    """Set the cache-first hint on each VM to the given state."""

    def __init__(self, hints: dict[str, bool]) -> None:
        super().__init__()
        self.hints = hints


class ToggleAuto(Message):
    """Switch automatic ballooning on or off for these VMs (None: the whole fleet)."""

    def __init__(self, names: Sequence[str] | None, on: bool) -> None:
        super().__init__()
        self.names = None if names is None else list(names)
        self.on = on


class Reclaim(Message):
    """Take these VMs back from another writer (auto manages them again)."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__()
        self.names = list(names)


class EnableStats(Message):
    """Turn on guest stats polling at ``interval`` seconds."""

    def __init__(self, names: Sequence[str], interval: int) -> None:
        super().__init__()
        self.names = list(names)
        self.interval = interval
