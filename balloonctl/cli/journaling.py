"""The CLI's journal: where it is (``--journal``, ``$BALLOONCTL_JOURNAL``, the config's
``[journal] path``, the default), and the recorder that journals every target ``set``,
``wave`` and the dashboard send (``balloonctl.changes.JournalRecorder``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from balloonctl.auto import AutoController
    from balloonctl.fleet import Fleet
    from balloonctl.journal import Journal

__all__ = ["dashboard_auto", "journal", "record_targets"]


def journal() -> Journal:
    """The journal the command writes and reads.

    Raises:
        UsageError: the config file is wrong (loading the inventory).
    """
    from balloonctl.cli.common import settings

    s = settings()
    from balloonctl.journal import Journal, journal_path

    return Journal(journal_path(s.journal, configured=s.inventory().config.journal))


def record_targets(origin: str, reason: str, *, check: bool = True) -> None:
    """Journal every target the command's clients and fleets send from now on, as
    ``origin`` with ``reason``. ``check`` first makes sure the journal can be written, so
    a command refuses before it changes anything.

    Raises:
        JournalError: ``check`` and the journal cannot be written.
    """
    from balloonctl.cli.common import settings

    where = journal()
    if check:
        where.check_writable()
    from balloonctl.changes import JournalRecorder
    from balloonctl.journal import Origin

    settings().recorder = JournalRecorder(where, Origin(origin), reason)


def dashboard_auto(fleet: Fleet, on: bool, host_root: Path) -> AutoController:
    """The automatic ballooning the dashboard switches on and off (``on``: from the start)
    over ``fleet`` on the host at ``host_root``, with the config's policy, journaling as
    ``auto``."""
    from balloonctl.auto import AutoController
    from balloonctl.cli.common import settings

    policy = settings().inventory().config.policy
    controller = AutoController(fleet, settings=policy, host_root=host_root,
                                journal=journal())
    controller.enabled = None if on else set()
    return controller
