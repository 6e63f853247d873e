"""Fault injection switches for a fake VM. Every field may be changed at any time."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = ["FaultAction", "Faults"]


class FaultAction(enum.Enum):
    """What the server does with one command instead of (or before) answering it."""

    NONE = "none"
    DROP = "drop"  # close the connection without a reply
    GARBAGE = "garbage"  # reply with bytes that are not JSON
    ERROR = "error"  # reply with the configured QMP error


# The reply sent for garbage_on: not JSON, but newline-terminated like a real message.
GARBAGE = b"}{ not json at all \x01\x02\r\n"


@dataclass
class Faults:
    """Fault injection, shared by a VM's QMP and guest-agent servers.

    Command names are matched exactly (``query-balloon``, ``qom-get``, ``guest-exec``...).

    - ``never_greet``: accept QMP connections but never send the greeting (a hung QEMU).
    - ``drop_on``: close the connection when one of these commands arrives.
    - ``garbage_on``: answer these commands with non-JSON bytes.
    - ``delay``: seconds to wait before answering a command (later commands queue behind it).
    - ``errors``: answer a command with ``{"error": {"class": cls, "desc": desc}}``.
    - ``stale_stats``: the guest stops answering stats requests: ``last-update`` freezes
      although polling is on.
    - ``stuck``: the balloon stops moving (``actual`` stays where it is).
    """

    never_greet: bool = False
    drop_on: set[str] = field(default_factory=set)
    garbage_on: set[str] = field(default_factory=set)
    delay: dict[str, float] = field(default_factory=dict)
    errors: dict[str, tuple[str, str]] = field(default_factory=dict)
    stale_stats: bool = False
    stuck: bool = False

    def action_for(self, command: str) -> FaultAction:
        if command in self.drop_on:
            return FaultAction.DROP
        if command in self.garbage_on:
            return FaultAction.GARBAGE
        if command in self.errors:
            return FaultAction.ERROR
        return FaultAction.NONE

    def clear(self) -> None:
        """Switch every fault off."""
        self.never_greet = False
        self.drop_on.clear()
        self.garbage_on.clear()
        self.delay.clear()
        self.errors.clear()
        self.stale_stats = False
        self.stuck = False
