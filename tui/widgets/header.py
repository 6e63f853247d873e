"""Fleet totals and host memory, one line across the top; with several ``balloonctl
serve`` hosts, a line per host under it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual.widgets import Static

from balloonctl.host import HostMemory, describe_host
from balloonctl.text import escape_text
from balloonctl.units import format_size
from tui.fleetview import HostTotals, Totals

if TYPE_CHECKING:
    from balloonctl.http.hosts import HostStatus

__all__ = ["FleetHeader", "host_line"]


def host_line(t: HostTotals, status: HostStatus, *, compact: bool = False) -> Text:
    """One host's line: its VMs (answering/all), the sums of their guest RAM, actual, free
    and cached, then the host's own RAM, available memory, PSI (some, avg10) and what KSM
    saves, as its service reports them; or why the host is unreachable, or why its stream
    (auto's plan and changes) failed."""
    def size(value: int) -> str:
        return format_size(value, compact=compact)

    text = Text()
    text.append(escape_text(t.host), style="bold")
    text.append(f" {t.reachable}/{t.vms}" if compact else f"  VMs {t.reachable}/{t.vms}")
    if status.error is not None:
        text.append(f"  unreachable: {escape_text(status.error)}", style="bold red")
        return text
    if status.auto_error is not None:  # its stream failed: no plan, no auto changes
        text.append(f"  auto: {escape_text(status.auto_error)}", style="bold red")
        return text
    sums: tuple[tuple[str, int], ...]
    if compact:  # "act 9.8G/12G": actual of guest RAM
        text.append(" act ", style="dim")
        text.append(f"{size(t.actual)}/{size(t.guest_ram)}")
        sums = (("free", t.free), ("cache", t.cached))
    else:
        sums = (("guest RAM", t.guest_ram), ("actual", t.actual), ("free", t.free),
                ("cached", t.cached))
    for label, value in sums:
        text.append(f" {label} " if compact else f"  {label} ", style="dim")
        text.append(size(value))
    text.append(" │ host " if compact else "  │  host ", style="dim")
    host = status.memory
    if host is None:
        text.append(escape_text(status.memory_error or "-"), style="dim")
        return text
    text.append(size(host.total))
    text.append(" av " if compact else "  available ", style="dim")
    text.append(size(host.available))
    psi = host.psi
    text.append(" PSI " if compact else "  PSI some ", style="dim")
    text.append("-" if psi is None else f"{psi.some_avg10:.0f}%" if compact
                else f"{psi.some_avg10:.2f} %")
    ksm = host.ksm
    text.append(" KSM " if compact else "  KSM saved ", style="dim")
    text.append("-" if ksm is None else size(ksm.saved))
    return text


class FleetHeader(Static):
    """``show`` with the latest totals and host memory (either may be missing)."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._totals: Totals | None = None
        self._host: HostMemory | None = None
        self._host_error: str | None = None
        self._source_error: str | None = None
        # one line per host (a dashboard over balloonctl serve instances)
        self._hosts: list[tuple[HostTotals, HostStatus]] = []
        self._shown: Text | None = None

    def show(
        self,
        totals: Totals | None = None,
        host: HostMemory | None = None,
        *,
        host_error: str | None = None,
    ) -> None:
        if totals is not None:
            self._totals = totals
        if host is not None or host_error is not None:
            self._host, self._host_error = host, host_error
        self._update()

    def hosts(self, hosts: list[tuple[HostTotals, HostStatus]]) -> None:
        """One line per host under the totals (a dashboard over services)."""
        self._hosts = list(hosts)
        self._update()

    def source_error(self, error: str | None) -> None:
        self._source_error = error
        self._update()

    def on_resize(self) -> None:
        self._update()

    def _update(self) -> None:
        """Repaint only when the line changed (host memory and errors come every poll). A
        terminal too narrow for the line gets the compact sizes (``1.3G``)."""
        text = self._render_text(compact=False)
        width = self.content_size.width
        if width and max(line.cell_len for line in text.split("\n")) > width:
            text = self._render_text(compact=True)
        if self._shown is None or text != self._shown:
            # a line more or less (a host's line, a source error) changes the layout
            lines = self._shown is None or text.plain.count("\n") != self._shown.plain.count("\n")
            self._shown = text
            self.update(text, layout=lines)

    def _render_text(self, *, compact: bool) -> Text:
        def size(value: int | None) -> str:
            return format_size(value, compact=compact)

        text = Text()
        t = self._totals
        if t is not None:
            text.append("VMs ", style="dim")
            text.append(f"{t.reachable}/{t.vms}")
            for label, value in (
                ("RAM" if compact else "guest RAM", t.guest_ram),
                ("ballooned", t.ballooned),
                ("free", t.free),
                ("cached", t.cached),
            ):
                text.append(f"  {label} ", style="dim")
                text.append(size(value))
        else:
            text.append("waiting for the first snapshot…", style="dim")
        host = self._host
        if not (self._hosts and host is None and self._host_error is None):
            # (over balloonctl serve instances, the hosts' own lines say it)
            text.append(" │ host " if compact else "  │  host ", style="dim")
            self._host_part(text, t, compact)
        for totals, status in self._hosts:
            text.append("\n")
            text.append(host_line(totals, status, compact=compact))
        if self._source_error:
            text.append(f"\nsource: {self._source_error}", style="bold red")
        return text

    def _host_part(self, text: Text, t: Totals | None, compact: bool) -> None:
        def size(value: int | None) -> str:
            return format_size(value, compact=compact)

        host = self._host
        if host is not None and not compact and (host.psi is not None or host.ksm is not None):
            # the whole host (read_host): RAM, available, overcommit, KSM, PSI; a narrow
            # terminal gets free and available only
            line = describe_host(host, 0 if t is None else t.guest_ram)
            text.append(line.removeprefix("host "))
        elif host is not None:
            text.append("free ", style="dim")
            text.append(size(host.free))
            text.append(" avail ", style="dim")
            text.append(size(host.available))
        else:
            text.append(self._host_error or "-", style="dim")
