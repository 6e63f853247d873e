"""Fleet totals and host memory, one line across the top."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from balloonctl.host import HostMemory, describe_host
from balloonctl.units import format_size
from tui.fleetview import Totals

__all__ = ["FleetHeader"]


class FleetHeader(Static):
    """``show`` with the latest totals and host memory (either may be missing)."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._totals: Totals | None = None
        self._host: HostMemory | None = None
        self._host_error: str | None = None
        self._source_error: str | None = None
        self._hosts: list[str] = []  # one line per host (several balloonctl serve)
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

    def hosts(self, lines: list[str]) -> None:
        """One line per host under the totals (a dashboard over several services)."""
        self._hosts = list(lines)
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
        if width and text.split("\n")[0].cell_len > width:
            text = self._render_text(compact=True)
        if self._shown is None or text != self._shown:
            self._shown = text
            self.update(text, layout=False)

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
        text.append(" │ host " if compact else "  │  host ", style="dim")
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
        for line in self._hosts:
            text.append("\n")
            text.append(line, style="bold red" if "unreachable" in line else "")
        if self._source_error:
            text.append(f"\nsource: {self._source_error}", style="bold red")
        return text
