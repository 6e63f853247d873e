"""The experiments on the simulator: a fake fleet (fake QEMU over real sockets) on simulated
time, with a simulated host, driven through the same ``BalloonClient`` as real VMs.

Each run gets a fleet of its own, started from the same seeds, so the two runs of an
experiment differ only by the hint. The balloon device is the RFC's patched one
(``reclaim-cache-first``): with the hint on, the guest takes each balloon page from clean
page cache first (``balloonctl.fake.guest``). Each guest runs the compile workload for
``work`` seconds of work; its run time is the guest time that took, stalls included.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from balloonctl.experiment.runs import Bench
from balloonctl.host import SIMULATED_HOST_DIR, HostMemory, read_host
from balloonctl.store import MemoryStore
from balloonctl.units import GiB

if TYPE_CHECKING:
    from balloonctl.fake import FakeFleet
    from balloonctl.fake.simclock import SimClock
    from balloonctl.qmp import BalloonClient

__all__ = ["OVERCOMMIT_SIM", "SIM_TICK", "WAVE_SIM", "SimBench", "SimSetup", "sim_benches"]

# Simulated seconds per timer tick: the balloon, the workload and the host move this often.
SIM_TICK: Final = 0.25


@dataclass(frozen=True, slots=True)
class SimSetup:
    """The simulated machine of an experiment: ``vms`` guests of ``ram`` bytes on a host
    of ``host_mem`` bytes (``host_swap`` of swap, KSM on), each running ``work`` seconds
    of the compile workload; ``speed`` simulated seconds per wall second (at most)."""

    vms: int
    ram: int
    host_mem: int
    host_swap: int = 0
    work: float = 200.0
    speed: float = 10.0
    seed: int = 1

    def __post_init__(self) -> None:
        if self.vms < 1 or self.work <= 0 or self.speed <= 0:
            raise ValueError("a simulated setup needs a VM, some work and a positive speed")


# Test 1: one 2 GiB VM (the host has room to spare). Test 2: six 2 GiB VMs on a host with
# less memory than they add up to (12 GiB of guests on 8 GiB, 4 GiB of host swap).
WAVE_SIM: Final = SimSetup(vms=1, ram=2 * GiB, host_mem=8 * GiB, host_swap=4 * GiB)
OVERCOMMIT_SIM: Final = SimSetup(vms=6, ram=2 * GiB, host_mem=8 * GiB, host_swap=4 * GiB)


class SimBench:
    """A running fake fleet and a client for each of its VMs (see the module docstring)."""

    def __init__(self, fleet: FakeFleet, clock: SimClock, work: float,
                 clients: Mapping[str, BalloonClient]) -> None:
        self.fleet = fleet
        self.clock = clock
        self.work = work
        self.clients = clients

    def read_host(self) -> HostMemory | None:
        """Raises: HostReadError: the simulated host's files are unreadable."""
        return read_host(self.fleet.directory / SIMULATED_HOST_DIR)

    async def start_workloads(self) -> None:
        for vm in self.fleet.vms:
            vm.guest.work_goal = self.work
            vm.guest.workload = "compile"

    def finished(self) -> bool:
        return all(vm.guest.work_finished is not None for vm in self.fleet.vms)

    async def stop_workloads(self) -> dict[str, float | None]:
        times = {vm.name: vm.guest.work_finished for vm in self.fleet.vms}
        for vm in self.fleet.vms:
            vm.guest.workload = None
        return times


@contextlib.asynccontextmanager
async def _open(setup: SimSetup) -> AsyncIterator[Bench]:
    # Imported here: the fake is needed only on the simulator.
    from balloonctl.fake import FakeFleet
    from balloonctl.fake.simclock import SimClock
    from balloonctl.qmp import BalloonClient

    directory = Path(tempfile.mkdtemp(prefix="balloonctl-exp-"))
    clock = SimClock(setup.speed)
    fleet = FakeFleet(setup.vms, directory, ram=setup.ram, hint_device=True, agent=False,
                      seed=setup.seed, tick=SIM_TICK / setup.speed, clock=clock,
                      host_mem=setup.host_mem, host={"swap_total": setup.host_swap})
    clients: dict[str, BalloonClient] = {}
    try:
        async with fleet:
            for vm in fleet.vms:
                clients[vm.name] = BalloonClient(str(vm.qmp_path), name=vm.name,
                                                 store=MemoryStore())
            try:
                yield SimBench(fleet, clock, setup.work, clients)
            finally:
                for c in clients.values():
                    await c.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def sim_benches(setup: SimSetup) -> Callable[[], AbstractAsyncContextManager[Bench]]:
    """A fresh simulated bench for each run, from the same seeds."""
    return lambda: _open(setup)
