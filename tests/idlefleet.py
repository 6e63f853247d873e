"""Idle fake guests on a simulated host without KSM, for the automatic-ballooning tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from balloonctl.fake import FakeFleet
from balloonctl.units import GiB

__all__ = ["idle_fleet"]


@asynccontextmanager
async def idle_fleet(directory: Path, *, host_mem: int, vms: int = 3, ram: int = 2 * GiB,
                     **more: Any) -> AsyncIterator[FakeFleet]:
    """``vms`` idle guests of ``ram`` each on a simulated host of ``host_mem`` (no KSM, no
    swap), their balloons fast (4 GiB a second), served in this loop until the block ends;
    ``more`` goes to ``FakeFleet`` (e.g. ``stats_interval``)."""
    fleet = FakeFleet(vms, directory, ram=ram, host_mem=host_mem,
                      host={"ksm_run": False, "ksm_fraction": 0.0}, tick=0.01, rate=4 * GiB,
                      **more)
    await fleet.start()
    try:
        yield fleet
    finally:
        await fleet.stop()
