"""Journaling the target changes balloonctl makes or finds, for every command alike.

``JournalRecorder`` is a ``BalloonClient``/``Fleet`` ``recorder``: the one place where the
targets ``set``, ``wave`` and the dashboard send are journaled (``auto`` and ``undo`` journal
their own entries, with their reasons, in batches). ``on_behalf`` lets a caller that acts for
someone else (``balloonctl serve`` for an HTTP client) name the origin and reason of the
changes it makes meanwhile. ``foreign_entry`` is the entry for a move by another writer
(``balloonctl.targets``). Journaling happens after the target was sent and
before the command reports success; a journal that cannot be written raises a
``JournalError`` that says the change stands unrecorded.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from balloonctl.errors import JournalError
from balloonctl.journal import Journal, JournalEntry, Origin
from balloonctl.model import TargetChange
from balloonctl.units import format_size

__all__ = ["JournalRecorder", "foreign_entry", "on_behalf", "unrecorded"]

_ON_BEHALF: contextvars.ContextVar[tuple[Origin, str] | None] = contextvars.ContextVar(
    "balloonctl_on_behalf", default=None)


@contextlib.contextmanager
def on_behalf(origin: Origin, reason: str) -> Iterator[None]:
    """Inside (in this task and the tasks it starts), a ``JournalRecorder`` journals with
    ``origin`` and ``reason`` instead of its own."""
    token = _ON_BEHALF.set((origin, reason))
    try:
        yield
    finally:
        _ON_BEHALF.reset(token)


def unrecorded(exc: JournalError, what: str) -> JournalError:
    """``exc`` reworded for a change already made: ``what`` stands, unrecorded."""
    return JournalError(f"{what}, but it is not in the journal: {exc.message}", path=exc.path,
                        vm=exc.vm)


class JournalRecorder:
    """Journals each ``TargetChange`` with ``origin`` and ``reason`` (a text, or a function
    of the change; both as ``on_behalf`` says inside one), fsynced before the call returns.

    Raises (when called):
        JournalError: the journal cannot be written; the message says the target was set.
    """

    def __init__(self, journal: Journal, origin: Origin,
                 reason: str | Callable[[TargetChange], str]) -> None:
        self.journal = journal
        self.origin = origin
        self.reason = reason

    def __call__(self, change: TargetChange) -> None:
        origin = self.origin
        reason = self.reason if isinstance(self.reason, str) else self.reason(change)
        behalf = _ON_BEHALF.get()
        if behalf is not None:
            origin, reason = behalf
        entry = JournalEntry.new(vm=change.vm, qmp=change.qmp, previous=change.previous,
                                 target=change.target, reason=reason, origin=origin)
        try:
            self.journal.append(entry)
        except JournalError as exc:
            raise unrecorded(exc, f"target {format_size(change.target)} set on "
                                  f"{change.vm}") from None


def foreign_entry(vm: str, qmp: str, mark: Mapping[str, Any], actual: int) -> JournalEntry:
    """The ``foreign`` entry for a move by another writer: ``previous`` is the target
    balloonctl last knew (``mark["previous"]``), ``target`` where the balloon settled
    (``actual``), the reason the rule that noticed it (``mark["why"]``).

    Raises:
        JournalError: a field of the wrong shape.
    """
    previous = mark.get("previous")
    why = mark.get("why")
    reason = "moved by another writer"
    if isinstance(why, str) and why:
        reason += f": {why}"
    return JournalEntry.new(vm=vm, qmp=qmp,
                            previous=previous if isinstance(previous, int) else None,
                            target=actual, reason=reason, origin=Origin.FOREIGN)
