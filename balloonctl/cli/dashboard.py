"""``balloonctl dashboard`` (alias ``top``): the Textual dashboard on the selected VMs.
Textual is imported only when it opens."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Annotated, Any

import typer

from balloonctl.cli import completers
from balloonctl.cli.common import AllOpt, VmsArg, duration, settings
from balloonctl.errors import BalloonError
from balloonctl.model import VmRef
from balloonctl.units import parse_size

__all__ = ["dashboard", "open_dashboard"]


def open_dashboard(refs: Sequence[VmRef], *, hold: bool,
                   discover: Callable[[], Iterable[VmRef]] | None = None, **opts: Any) -> None:
    try:
        from tui.app import run_dashboard
    except ImportError as exc:
        raise BalloonError(f"the dashboard is not available: {exc}") from None
    fleet = settings().fleet(refs, hold=hold)
    fleet.discover = discover  # sockets that appear in the watched directory become rows
    run_dashboard(fleet, **opts)


def dashboard(
    vms: VmsArg = None,
    all_vms: AllOpt = False,
    hold: Annotated[bool, typer.Option(
        "--hold/--polite",
        help="Keep the QMP sockets open (live events) or reconnect for every poll.",
    )] = False,
    interval: Annotated[str, typer.Option(
        "--interval", "-n", metavar="DURATION", help="Refresh interval.",
    )] = "1s",
    step_size: Annotated[str, typer.Option(
        "--step", metavar="SIZE", help="How much one +/- key press moves a target.",
        autocompletion=completers.typer_callback("step_size"),
    )] = "128M",
) -> None:
    """Open the live dashboard on the selected VMs (alias: top)."""
    every = duration(interval, "--interval") or 1.0
    patterns = [] if all_vms else list(vms or [])
    open_dashboard(settings().select(vms or [], all_vms=all_vms), hold=hold, interval=every,
                   step=parse_size(step_size),
                   discover=lambda: settings().inventory().rescan(patterns))


