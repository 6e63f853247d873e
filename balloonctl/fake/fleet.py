"""Many fake VMs in one process, sharing one timer (the demo and the dashboard benchmark)."""

from __future__ import annotations

import asyncio
import contextlib
import resource
from pathlib import Path
from typing import Any

from balloonctl.fake.service import Service
from balloonctl.fake.ticker import Ticker
from balloonctl.fake.vm import FakeVM

__all__ = ["FakeFleet"]

# File descriptors one VM may need: two listening sockets, a served client on each, and
# the client side when the caller talks to the fleet from the same process.
_FDS_PER_VM = 6


def _ensure_fd_limit(need: int) -> None:
    """Raise the soft RLIMIT_NOFILE toward ``need`` (a 1024 default runs out near 170 VMs)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


class FakeFleet(Service):
    """``n`` fake VMs named ``f"{prefix}{i}"`` (vm1..vmN) in ``directory``.

    ``vm_kwargs`` go to every ``FakeVM``; ``seed`` (default 0) becomes ``seed + i`` so the
    VMs' workloads differ but stay reproducible.
    """

    def __init__(self, n: int, directory: Path, *, prefix: str = "vm", **vm_kwargs: Any) -> None:
        """Raises: ValueError: as FakeVM."""
        self.directory = Path(directory)
        seed = int(vm_kwargs.pop("seed", 0))
        self.vms: list[FakeVM] = [
            FakeVM(f"{prefix}{i}", self.directory, seed=seed + i, **vm_kwargs)
            for i in range(1, n + 1)
        ]
        tick = min((vm.tick for vm in self.vms), default=0.05)
        self.ticker = Ticker(tick)
        for vm in self.vms:
            vm.use_ticker(self.ticker)
        self.loop: asyncio.AbstractEventLoop | None = None

    def __getitem__(self, name: str) -> FakeVM:
        """The VM called ``name``. Raises: KeyError."""
        for vm in self.vms:
            if vm.name == name:
                return vm
        raise KeyError(name)

    async def start(self) -> None:
        """Start every VM. Raises: OSError: a socket cannot be created."""
        self.loop = asyncio.get_running_loop()
        self.directory.mkdir(parents=True, exist_ok=True)
        _ensure_fd_limit(len(self.vms) * _FDS_PER_VM + 256)
        try:
            await asyncio.gather(*(vm.start() for vm in self.vms))
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        await asyncio.gather(*(vm.stop() for vm in self.vms))
        await self.ticker.stop()
