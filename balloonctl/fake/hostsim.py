"""The simulated host under a fake fleet: its RAM, page cache, swap, KSM and PSI.

``HostSim`` is pure (no I/O, no clock): ``update(guests, dt)`` then ``reading()``. The fleet's
``SimulatedHost`` feeds it the running VMs every tick and writes the reading, in the kernel's
formats, under ``<fleet dir>/host`` (``proc/meminfo``, ``proc/pressure/memory``,
``sys/kernel/mm/ksm/*``), where ``balloonctl.host.read_host`` reads it like ``/``.

The model, in bytes:

* A guest's **resident** memory (what its QEMU holds on the host) is its RAM minus the
  balloon minus the guest-free memory it never touched::

      resident = ram - balloon - untouched

  ``untouched`` (``GuestSim.untouched``) starts as the guest's free memory at boot. It only
  shrinks: when the guest's free memory falls below it, the guest has had to use pages it
  never touched (Linux hands out recently freed, already touched pages first; so does the
  balloon driver). Pages the balloon gives back are untouched again (QEMU discarded them
  when it inflated). Touched memory the guest frees stays resident (the guest does not tell
  the host), except with ``free-page-reporting``, where all of the guest's free memory goes
  back to the host. So inflating a balloon by N over touched free memory or page cache
  returns N to the host; inflating over never-touched memory returns nothing, as on a real
  host.
* **KSM**: a ``ksm_fraction`` of each guest's kernel and anonymous memory is identical in
  every guest of the same ``image``. For a group of such guests, content present in ``c``
  guests saves ``c - 1`` copies: the mergeable saving is the sum of the group's identical
  memory minus its largest. While ``ksm_run`` is true, the saving KSM has made grows toward
  that at ``ksm_rate`` bytes per second (ksmd scans gradually); when stopped it keeps what
  it merged (``run=0`` in the kernel) and never grows; it shrinks at once when the guests'
  mergeable memory does (pages freed, copy-on-write, ballooned away).
* The host itself: ``kernel`` (not reclaimable, not anonymous) and ``own_anon`` (host
  processes) are fixed; guest memory is anonymous memory of the QEMU processes::

      anon = own_anon + sum(resident) - ksm saved

  What does not fit in RAM (less ``low_watermark``) goes to host swap (``swap_total``), and
  beyond swap is clamped (a real host would OOM). The host's page cache takes what is left,
  up to ``cache_target``; ``free`` is the rest, and ``available = max(0, free -
  low_watermark) + cache``.
* **PSI**: memory pressure starts when available memory falls below ``pressure_below`` of
  RAM. With ``short = 1 - available / (pressure_below * RAM)`` (0 to 1), ``some`` is
  ``100 * short`` percent and ``full`` ``100 * short ** 2``; avg10/avg60/avg300 follow it as
  the kernel's do, exponentially with those time constants (seconds); totals count the
  stalled microseconds.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from balloonctl.host import PAGE_SIZE, HostMemory, Ksm, Psi, host_files
from balloonctl.units import GiB, MiB

if TYPE_CHECKING:
    from balloonctl.fake.vm import FakeVM

__all__ = ["GuestMemory", "HostSim", "SimulatedHost", "guest_memory"]

_PSI_WINDOWS = (10.0, 60.0, 300.0)


@dataclass(frozen=True, slots=True)
class GuestMemory:
    """What the host sees of one running guest (bytes)."""

    name: str
    image: str
    ram: int
    balloon: int
    free: int
    untouched: int  # free memory the guest never touched: the host has no page behind it
    anon: int
    kernel: int
    reports_free: bool = False  # virtio-balloon free-page-reporting

    @property
    def resident(self) -> int:
        """What the guest's QEMU holds on the host."""
        return self.ram - self.balloon - (self.free if self.reports_free else self.untouched)


def guest_memory(vm: FakeVM) -> GuestMemory:
    """One fake VM as the host sees it."""
    g = vm.guest
    reports = vm.device is not None and vm.device.free_page_reporting
    return GuestMemory(vm.name, vm.image, g.ram, g.balloon, g.free, g.untouched, g.anon,
                       g.kernel_reserve, reports_free=reports)


def _pages(n: float) -> int:
    return int(n) // PAGE_SIZE * PAGE_SIZE


class HostSim:
    """The simulated host's memory (see the module docstring for the model)."""

    def __init__(
        self,
        ram: int,
        *,
        kernel: int | None = None,
        own_anon: int | None = None,
        cache_target: int | None = None,
        swap_total: int = 0,
        ksm_run: bool = True,
        ksm_fraction: float = 0.25,
        ksm_rate: int = 256 * MiB,
        pressure_below: float = 0.10,
    ) -> None:
        """Raises: ValueError: a host under 256 MiB, or a setting out of its range."""
        if ram < 256 * MiB:
            raise ValueError("the simulated host needs at least 256 MiB of RAM")
        if not 0.0 <= ksm_fraction <= 1.0 or not 0.0 < pressure_below <= 1.0:
            raise ValueError("ksm_fraction must be 0..1 and pressure_below above 0, at most 1")
        if swap_total < 0 or ksm_rate < 0:
            raise ValueError("swap_total and ksm_rate cannot be negative")
        self.ram = ram
        self.kernel = _pages(min(ram // 32, 512 * MiB)) if kernel is None else kernel
        self.own_anon = _pages(min(ram // 32, 512 * MiB)) if own_anon is None else own_anon
        self.cache_target = (
            _pages(min(ram // 10, 2 * GiB)) if cache_target is None else cache_target
        )
        self.low_watermark = _pages(min(ram // 100, 128 * MiB))
        if self.kernel + self.own_anon + self.low_watermark > ram:
            raise ValueError("the host's own memory does not fit in its RAM")
        self.swap_total = swap_total
        self.ksm_run = ksm_run
        self.ksm_fraction = ksm_fraction
        self.ksm_rate = ksm_rate
        self.pressure_below = pressure_below
        self.guest_ram = 0  # sum of the running guests' RAM
        self.resident = 0  # sum of their resident memory, before KSM
        self.ksm_saved = 0
        self.ksm_shared = 0  # bytes of distinct merged content (pages_shared)
        self.anon = self.own_anon
        self.swap_used = 0
        self.cache = 0
        self.free = 0
        self.available = 0
        self._psi = [0.0] * 6  # some avg10/60/300, full avg10/60/300
        self._psi_total = [0.0, 0.0]  # microseconds
        self.update((), 0.0)

    # --- the model --------------------------------------------------------------------

    def _mergeable(self, guests: Iterable[GuestMemory]) -> tuple[int, int]:
        """(bytes KSM could save, bytes of distinct shared content) over image groups."""
        groups: dict[str, list[int]] = {}
        for g in guests:
            groups.setdefault(g.image, []).append(_pages(self.ksm_fraction * (g.kernel + g.anon)))
        saved = shared = 0
        for sizes in groups.values():
            if len(sizes) < 2:
                continue
            sizes.sort(reverse=True)
            saved += sum(sizes) - sizes[0]
            shared += sizes[1]  # content found in at least two guests
        return saved, shared

    def update(self, guests: Sequence[GuestMemory], dt: float) -> None:
        """Advance ``dt`` seconds with these guests running (the others have stopped)."""
        self.guest_ram = sum(g.ram for g in guests)
        self.resident = sum(g.resident for g in guests)
        mergeable, shared = self._mergeable(guests)
        if self.ksm_run:
            self.ksm_saved = min(mergeable, self.ksm_saved + _pages(self.ksm_rate * dt))
        else:
            self.ksm_saved = min(mergeable, self.ksm_saved)
        self.ksm_shared = _pages(shared * self.ksm_saved / mergeable) if mergeable else 0
        room = self.ram - self.kernel - self.low_watermark
        demand = self.own_anon + self.resident - self.ksm_saved
        self.swap_used = min(self.swap_total, max(0, demand - room))
        self.anon = min(demand - self.swap_used, self.ram - self.kernel)
        left = self.ram - self.kernel - self.anon
        self.cache = max(0, min(self.cache_target, left - self.low_watermark))
        self.free = left - self.cache
        self.available = max(0, self.free - self.low_watermark) + self.cache
        self._pressure(dt)

    def _pressure(self, dt: float) -> None:
        floor = self.pressure_below * self.ram
        short = max(0.0, min(1.0, 1.0 - self.available / floor))
        now = (100.0 * short, 100.0 * short * short)
        for i, window in enumerate(_PSI_WINDOWS * 2):
            target = now[i // 3]
            self._psi[i] += (target - self._psi[i]) * (1.0 - math.exp(-dt / window))
        for i in range(2):
            self._psi_total[i] += now[i] / 100.0 * dt * 1e6

    # --- what the host reports --------------------------------------------------------

    def reading(self) -> HostMemory:
        """The host's figures now, as ``read_host`` would read them."""
        s10, s60, s300, f10, f60, f300 = (round(p, 2) for p in self._psi)
        psi = Psi(s10, s60, s300, f10, f60, f300, some_total=int(self._psi_total[0]),
                  full_total=int(self._psi_total[1]))
        ksm = Ksm(run=self.ksm_run, pages_shared=self.ksm_shared // PAGE_SIZE,
                  pages_sharing=self.ksm_saved // PAGE_SIZE, page_size=PAGE_SIZE)
        return HostMemory(
            total=self.ram, available=self.available, free=self.free, cached=self.cache,
            anon=self.anon, swap_total=self.swap_total,
            swap_free=self.swap_total - self.swap_used, psi=psi, ksm=ksm,
        )


class SimulatedHost:
    """A ``HostSim`` over a fleet's VMs, written under ``root`` on every timer tick.

    Each file is replaced atomically (a temporary file renamed over it), and only when its
    text changed. Not fsynced: the figures are rewritten every tick and mean nothing after
    a crash. ``remove()`` deletes what was written (the fleet calls it when it stops).
    """

    def __init__(self, sim: HostSim, root: Path, vms: Sequence[FakeVM]) -> None:
        self.sim = sim
        self.root = Path(root)
        self.vms = vms
        self._written: dict[str, str] = {}
        self._last: float | None = None
        self.ticks = 0  # updates so far (tests wait on this rather than on the clock)

    def on_tick(self, now: float, wall: float) -> None:
        dt = 0.0 if self._last is None else max(0.0, now - self._last)
        self._last = now
        self.sim.update([guest_memory(vm) for vm in self.vms if vm.running], dt)
        self.write()
        self.ticks += 1

    def write(self) -> None:
        """Write the current reading. Raises: OSError: the files cannot be written."""
        self._write_files(host_files(self.sim.reading()))

    def _write_files(self, files: Mapping[str, str]) -> None:
        for rel, text in files.items():
            if self._written.get(rel) == text:
                continue
            path = self.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            try:
                with os.fdopen(fd, "w", encoding="ascii") as fh:
                    fh.write(text)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            self._written[rel] = text

    def remove(self) -> None:
        """Delete the files written and the directories left empty (up to ``root``)."""
        dirs: set[Path] = set()
        for rel in self._written:
            path = self.root / rel
            with contextlib.suppress(OSError):
                path.unlink()
            dirs.update(p for p in path.parents if p == self.root or self.root in p.parents)
        self._written.clear()
        for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()  # only when empty: someone else's files stay
