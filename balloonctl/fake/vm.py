"""A fake QEMU VM: a QMP socket, an optional guest-agent socket and a simulated guest."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from balloonctl.fake.agent_server import AgentServer, GuestKernel
from balloonctl.fake.device import BalloonDevice
from balloonctl.fake.faults import Faults
from balloonctl.fake.guest import WORKLOAD_QUANTUM, GuestSim
from balloonctl.fake.machine import Machine
from balloonctl.fake.paths import check_socket_path, check_vm_name
from balloonctl.fake.qmp_server import QMPServer
from balloonctl.fake.service import Service
from balloonctl.fake.simclock import SimClock
from balloonctl.fake.ticker import Ticker
from balloonctl.fake.wire import event
from balloonctl.units import GiB, MiB

__all__ = ["FakeVM"]

# Never run more than this many workload steps in one tick (after a stall, skip ahead).
_MAX_WORKLOAD_STEPS = 20


class FakeVM(Service):
    """A fake QEMU 7.2 with a virtio-balloon device, served on unix sockets.

    ``qmp_path`` is ``directory / f"{name}.qmp"``, ``qga_path`` ``directory / f"{name}.qga"``
    (served only with ``agent=True``). ``guest`` is the simulated memory, ``faults`` the
    fault switches; both may be changed while the VM runs (from the VM's event loop).
    ``image`` names the guest's disk image: a simulated host's KSM merges memory between
    guests of the same image. ``qga_memory_reclaim=False`` gives the guest a kernel without
    cgroup v2 ``memory.reclaim`` (before 5.19), ``qga_cgroup2=False`` a guest without cgroup2
    mounted (the cache-reclaim script may mount it); ``kernel`` holds both while it runs.
    ``clock`` runs the VM on simulated time (a fleet passes its
    own): its timer then advances the clock (see ``SimClock``).
    """

    def __init__(
        self,
        name: str,
        directory: Path,
        *,
        ram: int = 2 * GiB,
        balloon: bool = True,
        driver: bool = True,
        driver_delay: float = 0.0,
        hint_device: bool = False,
        agent: bool = True,
        agent_exec: bool = True,
        qga_memory_reclaim: bool = True,
        qga_cgroup2: bool = True,
        rate: int = 512 * MiB,
        deflate_on_oom: bool = False,
        free_page_reporting: bool = False,
        free_page_hint: bool = False,
        device_id: str | None = "balloon0",
        workload: str | None = None,
        tick: float = 0.05,
        seed: int = 0,
        image: str = "debian-12",
        clock: SimClock | None = None,
    ) -> None:
        """Nothing is created until ``start``.

        Raises:
            ValueError: an unknown workload, an impossible memory size, or a name that is not
                one file name (empty, ``/``, NUL).
            SocketPathTooLong: (an OSError) a socket path too long for AF_UNIX.
        """
        check_vm_name(name)
        self.name = name
        self.directory = Path(directory)
        self.qmp_path = self.directory / f"{name}.qmp"
        self.qga_path = self.directory / f"{name}.qga"
        check_socket_path(self.qmp_path)
        if agent:
            check_socket_path(self.qga_path)
        self.ram = ram
        self.tick = tick
        self.agent = agent
        self.image = image
        self.clock = clock
        self.faults = Faults()
        self.kernel = GuestKernel(memory_reclaim=qga_memory_reclaim, cgroup2_mounted=qga_cgroup2)
        self.guest = GuestSim(ram, deflate_on_oom=deflate_on_oom, workload=workload, seed=seed)
        self.device: BalloonDevice | None = None
        if balloon:
            self.device = BalloonDevice(
                self.guest,
                self.faults,
                device_id=device_id,
                hint_device=hint_device,
                deflate_on_oom=deflate_on_oom,
                free_page_reporting=free_page_reporting,
                free_page_hint=free_page_hint,
                driver=driver,
                driver_delay=driver_delay,
                rate=rate,
                on_actual_change=self._on_actual_change,
            )
        self.machine = Machine(name, ram, self.device, agent=agent, clock=self._now)
        self.qmp = QMPServer(self.qmp_path, self.machine, self.faults, on_quit=self._on_quit)
        self.qga: AgentServer | None = None
        if agent:
            self.qga = AgentServer(
                self.qga_path, self.guest, self.faults, exec_enabled=agent_exec,
                kernel=self.kernel, clock=self._now,
            )
        self.loop: asyncio.AbstractEventLoop | None = None
        self.running = False
        self._ticker: Ticker | None = None
        self._own_ticker = False
        self._workload_time = 0.0
        self._last_tick = 0.0
        self._shutdown_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"FakeVM({self.name!r}, {str(self.qmp_path)!r}, running={self.running})"

    # --- lifecycle ---------------------------------------------------------------------

    def use_ticker(self, ticker: Ticker) -> None:
        """Share a fleet's timer instead of running one of our own (call before start)."""
        self._ticker = ticker

    async def start(self) -> None:
        """Boot: listen on the sockets and start the guest.

        Raises:
            OSError: a socket cannot be created.
        """
        if self.running:
            return
        self.loop = asyncio.get_running_loop()
        self.directory.mkdir(parents=True, exist_ok=True)
        now = self._now()
        self._last_tick = now
        self.machine.boot()
        if self.device is not None:
            self.device.start(now)
        try:
            await self.qmp.start()
            if self.qga is not None:
                await self.qga.start()
        except BaseException:
            await self.qmp.stop()
            raise
        if self._ticker is None:
            self._ticker = Ticker(self.tick, clock=self.clock)
            self._own_ticker = True
        self._ticker.add(self)
        self.running = True

    async def stop(self) -> None:
        """Power off without a goodbye: stop the timer, close and remove the sockets."""
        if self._ticker is not None:
            self._ticker.remove(self)
            if self._own_ticker:
                await self._ticker.stop()
                self._ticker = None
                self._own_ticker = False
        self.running = False
        await self.qmp.stop()
        if self.qga is not None:
            await self.qga.stop()

    async def shutdown(self, *, guest: bool = True, reason: str = "guest-shutdown") -> None:
        """The guest powers off like a QEMU exiting: the QMP client gets a SHUTDOWN event,
        the sockets close and their files go away (further connects fail)."""
        self.qmp.send_event(event("SHUTDOWN", {"guest": guest, "reason": reason}))
        await self.stop()

    def _on_quit(self) -> None:
        # QMP 'quit': the reply went out; now the SHUTDOWN event, then QEMU exits.
        self.qmp.send_event(event("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"}))
        self._shutdown_task = asyncio.get_running_loop().create_task(self.stop())

    # --- helpers for tests and the demo ------------------------------------------------

    def load_driver(self) -> None:
        """``modprobe virtio_balloon`` now (for VMs created with a driver delay or none)."""
        if self.device is not None:
            self.device.driver = True
            self.device.load_driver(self._now(), time.time())

    def call_threadsafe(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` on the VM's loop (when it runs in another thread).

        Raises:
            RuntimeError: the VM is not running.
        """
        if self.loop is None:
            raise RuntimeError("the VM is not running")
        self.loop.call_soon_threadsafe(fn, *args)

    # --- the timer ---------------------------------------------------------------------

    def _now(self) -> float:
        if self.clock is not None:
            return self.clock.now()
        loop = self.loop
        return loop.time() if loop is not None else time.monotonic()

    def on_tick(self, now: float, wall: float) -> None:
        """One timer tick: driver, balloon, stats, throttled events, workload."""
        dt = now - self._last_tick
        self._last_tick = now
        if self.device is not None:
            self.device.tick(now, wall)
        self.qmp.balloon_change.flush(now)
        if self.guest.workload is not None:
            self._workload_time += dt
            if self._workload_time >= WORKLOAD_QUANTUM:
                steps = int(self._workload_time / WORKLOAD_QUANTUM)
                self._workload_time -= steps * WORKLOAD_QUANTUM
                for _ in range(min(steps, _MAX_WORKLOAD_STEPS)):
                    self.guest.workload_step()

    def _on_actual_change(self, actual: int, wall: float) -> None:
        self.qmp.balloon_change.emit({"actual": actual}, self._now(), wall)
