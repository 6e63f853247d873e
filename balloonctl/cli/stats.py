"""``balloonctl stats``: the guest's memory statistics and their polling interval."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from balloonctl.cli.common import AllOpt, VmsArg, each, exit_with, out, report, run, settings
from balloonctl.errors import UsageError

if TYPE_CHECKING:
    from balloonctl.qmp import BalloonClient

__all__ = ["stats"]


def stats(
    vms: VmsArg = None,
    all_vms: AllOpt = False,
    interval: Annotated[int, typer.Option(
        "--interval", "-i", min=0, metavar="SECONDS",
        help="Guest stats polling interval in seconds (0 turns polling off).",
    )] = 2,
) -> None:
    """Turn on the guest's memory statistics (the balloon's stats polling)."""
    if not vms and not all_vms:
        raise UsageError("name the VMs (or --all)")
    refs = settings().select(vms or [], all_vms=all_vms)

    async def one(c: BalloonClient) -> str:
        await c.enable_stats(interval)
        if interval == 0:
            return f"{c.name}: guest stats polling off"
        return f"{c.name}: guest stats every {interval}s"

    results = run(each(refs, one))
    out("\n".join(r for r in results.values() if isinstance(r, str)))
    exit_with(report(results, refs))

