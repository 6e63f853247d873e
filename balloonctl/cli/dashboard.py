"""``balloonctl dashboard`` (alias ``top``): the Textual dashboard on the selected VMs.
Textual is imported only when it opens."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from balloonctl.cli import completers
from balloonctl.cli.common import AllOpt, VmsArg, duration, settings
from balloonctl.errors import BalloonError
from balloonctl.model import VmRef
from balloonctl.units import parse_size

if TYPE_CHECKING:
    from balloonctl.fleet import DataSource

__all__ = ["dashboard", "open_dashboard", "open_remote_dashboard"]


def open_dashboard(refs: Sequence[VmRef], *, hold: bool,
                   discover: Callable[[], Iterable[VmRef]] | None = None,
                   host_root: Path | None = None, auto_on: bool = False, **opts: Any) -> None:
    """Open the dashboard on ``refs``, journaling the targets it sets, with automatic
    ballooning over the host at ``host_root`` (default: the inventory's), on from the start
    when ``auto_on``.

    Raises:
        BalloonError: the dashboard's extra is not installed.
    """
    run_dashboard = _dashboard()
    from balloonctl.cli.journaling import dashboard_auto, record_targets

    record_targets("dashboard", "set in the dashboard", check=False)
    fleet = settings().fleet(refs, hold=hold)
    fleet.discover = discover  # sockets that appear in the watched directory become rows
    root = host_root or settings().inventory().host_root
    run_dashboard(fleet, auto=dashboard_auto(fleet, auto_on, root), host_root=root, **opts)


def _dashboard() -> Callable[..., None]:
    """``tui.app.run_dashboard``.

    Raises:
        BalloonError: the dashboard's extra is not installed.
    """
    try:
        from tui.app import run_dashboard
    except ImportError as exc:
        raise BalloonError(f"the dashboard is not available: {exc}") from None
    return run_dashboard


def open_remote_dashboard(source: DataSource, **opts: Any) -> None:
    """Open the dashboard on balloonctl serve instances (``http.hosts.MultiHost``): each
    host's memory and each change's journal are the service's own.

    Raises:
        BalloonError: the dashboard's extra is not installed.
    """
    _dashboard()(source, meminfo=None, **opts)


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
    """Open the live dashboard on the selected VMs (alias: top); with --host, on every VM
    of those balloonctl serve instances (a row per VM, a line per host)."""
    every = duration(interval, "--interval") or 1.0
    services = settings().services()
    if services is not None:
        from balloonctl.cli.hosts_cmd import multi_host

        open_remote_dashboard(multi_host(services), interval=every, step=parse_size(step_size))
        return
    patterns = [] if all_vms else list(vms or [])
    open_dashboard(settings().select(vms or [], all_vms=all_vms), hold=hold, interval=every,
                   step=parse_size(step_size),
                   discover=lambda: settings().inventory().rescan(patterns))


