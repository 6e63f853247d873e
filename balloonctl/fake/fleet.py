"""Many fake VMs in one process, sharing one timer (the demo and the dashboard benchmark)."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from balloonctl.fake.hostsim import HostSim, SimulatedHost
from balloonctl.fake.service import Service
from balloonctl.fake.simclock import SimClock
from balloonctl.fake.ticker import Ticker
from balloonctl.fake.vm import FakeVM
from balloonctl.host import SIMULATED_HOST_DIR

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
    VMs' workloads differ but stay reproducible. ``overrides`` maps a VM's name to
    ``FakeVM`` keyword arguments for that VM alone (``{"vm2": {"driver": False}}``).

    ``host_mem`` gives the fleet a simulated host with that much RAM (``HostSim`` keyword
    arguments in ``host``), written under ``directory / "host"`` on every tick while the
    fleet runs and removed when it stops; ``self.host`` is then a ``SimulatedHost``.

    ``clock`` runs the whole fleet on simulated time (see ``SimClock``): the shared timer
    advances it, the VMs and the simulated host read it.
    """

    def __init__(
        self,
        n: int,
        directory: Path,
        *,
        prefix: str = "vm",
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        host_mem: int | None = None,
        host: Mapping[str, Any] | None = None,
        clock: SimClock | None = None,
        **vm_kwargs: Any,
    ) -> None:
        """Nothing is created until ``start``.

        Raises:
            ValueError: as FakeVM or HostSim, or ``overrides`` names a VM not in the fleet.
            SocketPathTooLong: (an OSError) a VM's socket path is too long for AF_UNIX.
        """
        self.directory = Path(directory)
        seed = int(vm_kwargs.pop("seed", 0))
        names = [f"{prefix}{i}" for i in range(1, n + 1)]
        overrides = overrides or {}
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise ValueError(f"no VM named {', '.join(unknown)} in the fleet "
                             f"({names[0]}..{names[-1]})")
        self.vms: list[FakeVM] = [
            FakeVM(name, self.directory,
                   **{"seed": seed + i, "clock": clock, **vm_kwargs,
                      **overrides.get(name, {})})
            for i, name in enumerate(names, start=1)
        ]
        tick = min((vm.tick for vm in self.vms), default=0.05)
        self.clock = clock
        self.ticker = Ticker(tick, clock=clock)
        for vm in self.vms:
            vm.use_ticker(self.ticker)
        self.host: SimulatedHost | None = None
        if host_mem is not None:
            self.host = SimulatedHost(HostSim(host_mem, **(host or {})),
                                      self.directory / SIMULATED_HOST_DIR, self.vms)
        self.loop: asyncio.AbstractEventLoop | None = None

    def __getitem__(self, name: str) -> FakeVM:
        """The VM called ``name``. Raises: KeyError."""
        for vm in self.vms:
            if vm.name == name:
                return vm
        raise KeyError(name)

    async def start(self) -> None:
        """Start every VM (and the simulated host).

        Raises:
            OSError: a socket or the simulated host's files cannot be created.
        """
        self.loop = asyncio.get_running_loop()
        self.directory.mkdir(parents=True, exist_ok=True)
        _ensure_fd_limit(len(self.vms) * _FDS_PER_VM + 256)
        try:
            # every start runs to its end before a failure stops them all (a plain gather
            # would leave the others starting, and serving, after stop())
            results = await asyncio.gather(*(vm.start() for vm in self.vms),
                                           return_exceptions=True)
        except BaseException:
            await self.stop()
            raise
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            await self.stop()
            raise failed[0]
        if self.host is not None:
            try:  # the host's files exist before start returns; then every tick after the VMs'
                if self.clock is None:
                    self.host.on_tick(self.loop.time(), time.time())
                else:
                    self.host.on_tick(self.clock.now(), self.clock.wall())
            except BaseException:
                await self.stop()
                raise
            self.ticker.add(self.host)

    async def stop(self) -> None:
        await asyncio.gather(*(vm.stop() for vm in self.vms))
        await self.ticker.stop()
        if self.host is not None:
            self.host.remove()
