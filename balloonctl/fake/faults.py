"""Fault injection switches for a fake VM. Every field may be changed at any time."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["BAD_REPLIES", "FaultAction", "Faults", "fault_key"]


class FaultAction(enum.Enum):
    """What the server does with one command instead of (or before) answering it."""

    NONE = "none"
    DROP = "drop"  # close the connection without a reply
    GARBAGE = "garbage"  # reply with bytes that are not JSON
    ERROR = "error"  # reply with the configured QMP error


# The reply sent for garbage_on: not JSON, but newline-terminated like a real message.
GARBAGE = b"}{ not json at all \x01\x02\r\n"

# One malformed ``return`` value per command balloonctl sends (``--fault bad-reply:KEY``):
# JSON that parses, but not into what QEMU or qemu-ga would send. ``qom-get:PROP`` keys
# name the property read.
BAD_REPLIES: Final[Mapping[str, Any]] = {
    "query-balloon": {"actual": "1G"},
    "query-memory-size-summary": {"base-memory": 0},
    "qom-list": [{"type": "child<virtio-balloon-pci>"}],
    "qom-get:guest-stats": {"stats": {"stat-free-memory": "lots"}, "last-update": 1},
    "qom-get:guest-stats-polling-interval": "2",
    "qom-get:deflate-on-oom": "yes",
    "qom-get:free-page-reporting": 1,
    "qom-get:free-page-hint": None,
    "qom-get:reclaim-cache-first": [True],
    "qom-set": [],
    "balloon": "done",
    "query-cpus-fast": {"cpu-index": 0},
    "guest-sync": "not the id",
    "guest-ping": [],
    "guest-info": {"version": "7.2", "supported_commands": {"guest-exec": True}},
    "guest-exec": {"pid": "1000"},
    "guest-exec-status": {"exited": True, "exitcode": 0, "out-data": "not base64!"},
}


def _seconds(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0 <= value < 3600 else None


def fault_key(command: str, args: Mapping[str, Any]) -> list[str]:
    """The keys a reply fault may be set under, most specific first: ``qom-get:PROP`` (and
    ``qom-set:PROP``) before the command name."""
    prop = args.get("property")
    if command in ("qom-get", "qom-set") and isinstance(prop, str):
        return [f"{command}:{prop}", command]
    return [command]


@dataclass
class Faults:
    """Fault injection, shared by a VM's QMP and guest-agent servers.

    Command names are matched exactly (``query-balloon``, ``qom-get``, ``guest-exec``...).

    - ``never_greet``: accept QMP connections but never send the greeting (a hung QEMU).
    - ``drop_on``: close the connection when one of these commands arrives.
    - ``garbage_on``: answer these commands with non-JSON bytes.
    - ``delay``: seconds to wait before answering a command (later commands queue behind it).
    - ``errors``: answer a command with ``{"error": {"class": cls, "desc": desc}}``.
    - ``bad_reply``: answer a command (key as in ``fault_key``) with this ``return`` value
      instead of the real one (``BAD_REPLIES`` has one per command balloonctl sends).
    - ``raw_reply``: answer a command with this whole message instead (a list, an object
      without ``return``, ``{"error": null}``...); the command's ``id`` is added to objects.
    - ``bad_event``: send this whole message instead of each event of that name.
    - ``stale_stats``: the guest stops answering stats requests: ``last-update`` freezes
      although polling is on.
    - ``stuck``: the balloon stops moving (``actual`` stays where it is).
    """

    never_greet: bool = False
    drop_on: set[str] = field(default_factory=set)
    garbage_on: set[str] = field(default_factory=set)
    delay: dict[str, float] = field(default_factory=dict)
    errors: dict[str, tuple[str, str]] = field(default_factory=dict)
    bad_reply: dict[str, Any] = field(default_factory=dict)
    raw_reply: dict[str, Any] = field(default_factory=dict)
    bad_event: dict[str, Any] = field(default_factory=dict)
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

    def bad_message(self, command: str, args: Mapping[str, Any]) -> tuple[bool, Any]:
        """``(True, message)`` when a reply fault replaces this command's reply."""
        for key in fault_key(command, args):
            if key in self.raw_reply:
                return True, self.raw_reply[key]
            if key in self.bad_reply:
                return True, {"return": self.bad_reply[key]}
        return False, None

    def add(self, spec: str) -> None:
        """Switch on a fault named on a command line: ``bad-reply:KEY`` (a ``BAD_REPLIES``
        key), ``drop:CMD``, ``garbage:CMD``, ``delay:CMD@SECONDS`` or ``never-greet``.

        Raises:
            ValueError: an unknown fault or key (the message lists the known ones).
        """
        kind, _, key = spec.partition(":")
        if kind == "never-greet" and not key:
            self.never_greet = True
        elif kind == "bad-reply" and key in BAD_REPLIES:
            self.bad_reply[key] = BAD_REPLIES[key]
        elif kind == "drop" and key:
            self.drop_on.add(key)
        elif kind == "garbage" and key:
            self.garbage_on.add(key)
        elif kind == "delay" and "@" in key and _seconds(key.partition("@")[2]) is not None:
            cmd, _, seconds = key.partition("@")
            self.delay[cmd] = float(seconds)
        else:
            known = ", ".join(f"bad-reply:{k}" for k in BAD_REPLIES)
            raise ValueError(f"unknown fault {spec!r}: use never-greet, drop:CMD, garbage:CMD, "
                             f"delay:CMD@SECONDS or one of {known}")

    def clear(self) -> None:
        """Switch every fault off."""
        self.never_greet = False
        self.drop_on.clear()
        self.garbage_on.clear()
        self.delay.clear()
        self.errors.clear()
        self.bad_reply.clear()
        self.raw_reply.clear()
        self.bad_event.clear()
        self.stale_stats = False
        self.stuck = False
