"""What the dashboard shows of the auto controllers of ``balloonctl serve`` instances
(``balloonctl.http.hosts.MultiHost``): each VM's plan from its host's stream, auto's
changes as event-log lines, and the toolbar's count of hosts with auto on. Pure
functions over what the source already parsed (``http.wire``); no I/O."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from balloonctl.auto import AppliedChange, ForeignMove
from balloonctl.http.wire import AUTO_CHANGE, AUTO_FAILED, AUTO_FOREIGN
from balloonctl.model import split_host_name
from balloonctl.policy import Decision

if TYPE_CHECKING:
    from balloonctl.http.hosts import HostStatus
    from balloonctl.qmp import BalloonEvent
    from tui.fleetview import FleetView
    from tui.screens.main import MainScreen

__all__ = ["EventLine", "auto_event_line", "auto_status_text", "plans_of", "show_remote",
           "who"]


def who(name: str) -> str:
    """A row's name for a log line: ``hv2 vm3`` for ``hv2/vm3``, else the VM's name."""
    host, vm = split_host_name(name)
    return vm if host is None else f"{host} {vm}"


class EventLine:
    """An auto event as the log shows it (``text``, ``style``) and the detail pane's note."""

    __slots__ = ("note", "style", "text")

    def __init__(self, text: str, style: str, note: str) -> None:
        self.text, self.style, self.note = text, style, note


def _after_name(line: str, name: str) -> str:
    return line[len(name) + 2:]  # AppliedChange/ForeignMove.line() start "NAME: "


def auto_event_line(name: str, event: BalloonEvent) -> EventLine | None:
    """The log line of a service's auto event (``AUTO_CHANGE``: ``hv2 vm3: auto 2 GiB ->
    1.6 GiB (shrink): REASON``; ``AUTO_FOREIGN`` in yellow; ``AUTO_FAILED`` in red), or
    None for any other event."""
    data = event.data
    change, move = data.get("change"), data.get("move")
    if event.name == AUTO_CHANGE and isinstance(change, AppliedChange):
        rest = _after_name(change.line(), change.name)
        return EventLine(f"{who(name)}: auto {rest}", "", f"auto: {rest}")
    if event.name == AUTO_FOREIGN and isinstance(move, ForeignMove):
        rest = _after_name(move.line(), move.name)
        return EventLine(f"{who(name)}: {rest}", "yellow", rest)
    if event.name == AUTO_FAILED:
        error = str(data.get("error", ""))
        return EventLine(f"{who(name)}: auto failed: {error}", "red", f"auto failed: {error}")
    return None


def plans_of(source: Any) -> Mapping[str, tuple[Decision, bool]] | None:
    """The source's auto plans by row (``MultiHost.auto_plans``), None when it has none."""
    plans: Callable[[], Mapping[str, tuple[Decision, bool]]] | None = getattr(
        source, "auto_plans", None)
    return None if plans is None else plans()


def auto_status_text(hosts: Sequence[HostStatus]) -> str:
    """The toolbar's ``auto on 2/3 hosts`` (hosts whose service applies its plan, of the
    hosts), or "" when no host's plan has been seen."""
    known = [h for h in hosts if h.auto is not None]
    if not known:
        return ""
    on = sum(1 for h in known if h.auto)
    return f"auto {'on' if on else 'off'} {on}/{len(hosts)} hosts"


def show_remote(view: FleetView, main: MainScreen, source: Any,
                hosts: Sequence[HostStatus]) -> None:
    """After a poll of services: a line per host, each VM's plan from its host's stream,
    the toolbar's auto count."""
    main.show_hosts(hosts)
    plans = plans_of(source)
    if plans is not None:
        view.show_plans(plans)
        main.auto_status = auto_status_text(hosts)
