"""A simulated Linux guest's memory, as far as the virtio balloon can see it.

Guest RAM is split into five parts that always add up::

    free + cache + anon + balloon + kernel_reserve == ram

``cache`` is clean page cache (``stat-disk-caches``), ``anon`` anonymous memory resident in
RAM, ``balloon`` the pages the balloon driver holds. Swapped-out anonymous memory lives in
``swap_used`` (outside RAM). ``untouched`` is the part of ``free`` the guest has never
written since boot (or since the balloon gave it back): a host has no page behind it. Linux
hands out recently freed pages first, so ``untouched`` only shrinks when ``free`` falls
below it.

The balloon driver allocates pages like any other allocation (``__GFP_NORETRY``): the
kernel hands out free pages while free memory is above the low watermark, then reclaims
clean page cache, then swaps anonymous memory, and finally gives up near the min
watermark: the balloon stops short of its target. With the cache-first hint (the RFC's
``__GFP_FREE_CACHE``) each balloon page comes from clean cache first, as long as there is
cache above a small hot minimum (``MIN_CACHE``), and free memory is left alone until then.

``reclaim`` is the root cgroup's ``memory.reclaim``: clean cache first (down to the same
minimum), then, when swapping is allowed, anonymous memory.

The compile workload does work, and memory pressure costs it time (``workload_step``).
Its memory activity follows the clock (jobs start and end on schedule; a job waiting for
the disk still holds its memory), and each quantum is ``WORKLOAD_QUANTUM`` seconds of work
less what its I/O cost: a compiler job reads its sources; the share of them found in the
page cache is ``cache / tree`` (reclaim does not know which pages the build needs again),
the rest is read from disk at ``DISK_READ_RATE``; every byte swapped in or out costs
``1 / SWAP_RATE`` seconds. A cost larger than a quantum is owed by the next ones. With
``work_goal`` set, the workload stops (goes idle) once that much work is done, and
``work_finished`` is the guest time it took: kernbench's elapsed time.

No I/O, no asyncio: the fake VM drives this from its timer, tests may call it directly.
"""

from __future__ import annotations

import random
from typing import Final

from balloonctl.units import GiB, KiB, MiB

__all__ = ["DISK_READ_RATE", "MIN_CACHE", "PAGE", "SWAP_RATE", "WORKLOADS", "GuestSim"]

PAGE: Final = 4 * KiB
# Page cache that reclaim leaves in place: the hot pages of running programs and the like
# (a real guest keeps some megabytes; the busybox test guest about 8 MiB).
MIN_CACHE: Final = 8 * MiB
WORKLOADS: Final = ("idle", "compile")

# How much simulated time one workload step stands for (seconds).
WORKLOAD_QUANTUM: Final = 0.1
# What memory pressure costs the compile workload: reading from the guest's disk (bytes/s),
# and swapping (4 KiB pages at random places: several times slower per byte).
DISK_READ_RATE: Final = 200 * MiB
SWAP_RATE: Final = 40 * MiB


def _mib_floor(n: int) -> int:
    return n - n % MiB


class GuestSim:
    """Guest memory in bytes. Attributes may be read at any time; change them through methods.

    ``hint`` is the cache-first reclaim hint (the device property ``reclaim-cache-first``
    when the VM has it). ``swap_in``/``swap_out`` are cumulative bytes (the virtio stats
    report ``pages_to_bytes(PSWPIN/PSWPOUT)``), faults are counts. ``disk_reads`` is the
    bytes the workload read from disk; ``work_done``, ``work_time`` (seconds of guest time
    the workload ran, stalls included), ``work_goal`` and ``work_finished``: see the module
    docstring.
    """

    __slots__ = (
        "_build_left",
        "_jobs",
        "_objects",
        "_rng",
        "_stall",
        "_tree",
        "anon",
        "balloon",
        "balloon_target",
        "cache",
        "deflate_on_oom",
        "disk_reads",
        "free",
        "hint",
        "kernel_reserve",
        "low_watermark",
        "major_faults",
        "min_watermark",
        "minor_faults",
        "ram",
        "swap_in",
        "swap_out",
        "swap_total",
        "swap_used",
        "untouched",
        "work_done",
        "work_finished",
        "work_goal",
        "work_time",
        "workload",
    )

    def __init__(
        self,
        ram: int = 2 * GiB,
        *,
        anon: int | None = None,
        cache: int | None = None,
        kernel_reserve: int | None = None,
        swap_total: int | None = None,
        hint: bool = False,
        deflate_on_oom: bool = False,
        workload: str | None = None,
        seed: int = 0,
    ) -> None:
        """Raises: ValueError: the parts do not fit in ``ram``, or an unknown workload."""
        if workload is not None and workload not in WORKLOADS:
            raise ValueError(f"unknown workload {workload!r} (choose from {', '.join(WORKLOADS)})")
        if ram < 64 * MiB:
            raise ValueError("guest RAM must be at least 64 MiB")
        self.ram = ram
        self.kernel_reserve = (
            _mib_floor(min(64 * MiB, ram // 16)) if kernel_reserve is None else kernel_reserve
        )
        # Linux's watermarks scale with RAM; these are the fake's round numbers.
        self.low_watermark = min(64 * MiB, ram // 50) // PAGE * PAGE
        self.min_watermark = self.low_watermark // 2 // PAGE * PAGE
        self.anon = _mib_floor(ram // 10) if anon is None else anon
        self.cache = _mib_floor(ram // 20) if cache is None else cache
        self.balloon = 0
        self.balloon_target = 0
        self.free = ram - self.kernel_reserve - self.anon - self.cache
        self.untouched = self.free
        if self.free < 0 or min(self.anon, self.cache, self.kernel_reserve) < 0:
            raise ValueError("anon + cache + kernel_reserve exceed guest RAM")
        self.swap_total = ram // 4 if swap_total is None else swap_total
        self.swap_used = 0
        self.swap_in = 0
        self.swap_out = 0
        self.major_faults = 0
        self.minor_faults = 0
        self.hint = hint
        self.deflate_on_oom = deflate_on_oom
        self.workload = workload
        self._rng = random.Random(seed)
        # compile workload: (steps left, anon bytes) per running compiler job
        self._jobs: list[list[int]] = []
        self._tree = min(ram * 2 // 5, 1200 * MiB)
        self._objects = 0  # page cache of the object files this build wrote
        self._build_left = self._rng.randint(900, 1500)  # steps until 'make clean'
        self.disk_reads = 0
        self.work_done = 0.0
        self.work_time = 0.0
        self.work_goal: float | None = None
        self.work_finished: float | None = None
        self._stall = 0.0  # seconds of I/O the workload still waits for

    # --- what the guest reports -------------------------------------------------------

    @property
    def actual(self) -> int:
        """Guest RAM minus the balloon: what ``query-balloon`` reports."""
        return self.ram - self.balloon

    @property
    def total_memory(self) -> int:
        # MemTotal loses ballooned pages, except with deflate-on-oom (the driver then
        # does not adjust totalram_pages).
        balloon = 0 if self.deflate_on_oom else self.balloon
        return self.ram - self.kernel_reserve - balloon

    @property
    def available_memory(self) -> int:
        return max(0, self.free - self.low_watermark) + self.cache

    def stats(self) -> dict[str, int]:
        """The ``stats`` member of ``qom-get guest-stats`` (a new dict each call)."""
        return {
            "stat-swap-in": self.swap_in,
            "stat-swap-out": self.swap_out,
            "stat-major-faults": self.major_faults,
            "stat-minor-faults": self.minor_faults,
            "stat-free-memory": self.free,
            "stat-total-memory": self.total_memory,
            "stat-available-memory": self.available_memory,
            "stat-disk-caches": self.cache,
            "stat-htlb-pgalloc": 0,
            "stat-htlb-pgfail": 0,
        }

    def meminfo(self) -> str:
        """A plausible ``/proc/meminfo`` derived from the simulation."""
        kb = 1024
        rows = [
            ("MemTotal", self.total_memory),
            ("MemFree", self.free),
            ("MemAvailable", self.available_memory),
            ("Buffers", 0),
            ("Cached", self.cache),
            ("SwapCached", 0),
            ("Active", self.anon // 2 + self.cache // 2),
            ("Inactive", self.anon - self.anon // 2 + self.cache - self.cache // 2),
            ("Active(anon)", self.anon // 2),
            ("Inactive(anon)", self.anon - self.anon // 2),
            ("Active(file)", self.cache // 2),
            ("Inactive(file)", self.cache - self.cache // 2),
            ("Unevictable", 0),
            ("Mlocked", 0),
            ("SwapTotal", self.swap_total),
            ("SwapFree", self.swap_total - self.swap_used),
            ("Dirty", 0),
            ("Writeback", 0),
            ("AnonPages", self.anon),
            ("Mapped", self.cache // 8),
            ("Shmem", 0),
            ("Slab", self.kernel_reserve // 2),
            ("CommitLimit", self.total_memory // 2 + self.swap_total),
            ("Committed_AS", self.anon + self.swap_used),
            ("HugePages_Total", 0),
            ("Hugepagesize", 2048 * kb),
        ]
        lines = []
        for name, value in rows:
            if name.startswith("HugePages_"):
                lines.append(f"{name + ':':<16}{value:>8}")
            else:
                lines.append(f"{name + ':':<16}{value // kb:>8} kB")
        return "\n".join(lines) + "\n"

    # --- the guest's own activity -------------------------------------------------------

    def read_file(self, n: int) -> int:
        """Read ``n`` bytes of files: page cache grows while free memory is above the low
        watermark, beyond that new file pages replace old ones. Returns bytes read."""
        n = max(0, n)
        grow = min(n, max(0, self.free - self.low_watermark))
        self._use_free(grow)
        self.cache += grow
        self.major_faults += n // PAGE // 32  # readahead: one fault per 128 KiB
        return n

    def alloc(self, n: int) -> int:
        """Allocate ``n`` bytes of anonymous memory, reclaiming cache, swapping and (with
        deflate-on-oom) deflating the balloon as the kernel would. Returns the bytes
        allocated: less than ``n`` means the allocation hit OOM."""
        n = max(0, n)
        got = self._take_free(n, self.low_watermark)
        got += self._reclaim_cache(n - got)
        got += self._swap_out(n - got)
        got += self._take_free(n - got, self.min_watermark)
        if got < n and self.deflate_on_oom and self.balloon:
            # virtio_balloon's OOM notifier hands balloon pages back.
            back = min(n - got, self.balloon)
            self.balloon -= back
            got += back
        self.anon += got
        self.minor_faults += got // PAGE
        return got

    def release_anon(self, n: int) -> int:
        """Free ``n`` bytes of anonymous memory (resident first, then swapped). Returns
        bytes freed from RAM."""
        n = max(0, n)
        resident = min(n, self.anon)
        self.anon -= resident
        self.free += resident
        swapped = min(n - resident, self.swap_used)
        self.swap_used -= swapped
        return resident

    def drop_caches(self) -> int:
        """``echo 1 > /proc/sys/vm/drop_caches``: all clean page cache becomes free.
        Returns the bytes released."""
        released = self.cache
        self.cache = 0
        self.free += released
        return released

    def reclaim(self, n: int, *, swap: bool) -> int:
        """``echo N > /sys/fs/cgroup/memory.reclaim``: reclaim up to ``n`` bytes, clean page
        cache first (down to ``MIN_CACHE``), then with ``swap`` anonymous memory (a 6.1
        kernel without ``swappiness=0``). Reclaimed pages become free. Returns the bytes
        reclaimed: less than ``n`` is the kernel's EAGAIN."""
        n = max(0, n)
        got = self._reclaim_cache(n, keep=MIN_CACHE)
        if swap:
            got += self._swap_out(n - got)
        self.free += got
        return got

    def swap_in_some(self, n: int) -> int:
        """Fault swapped pages back in: the kernel makes room from free memory above the low
        watermark, then by reclaiming clean page cache (never by swapping others out).
        Returns the bytes swapped in."""
        n = min(max(0, n), self.swap_used)
        got = self._take_free(n, self.low_watermark)
        got += self._reclaim_cache(n - got)
        self.swap_used -= got
        self.anon += got
        self.swap_in += got
        self.major_faults += got // PAGE
        return got

    # --- the balloon -------------------------------------------------------------------

    def set_target(self, actual: int) -> None:
        """Point the balloon at ``actual`` bytes of guest RAM (QEMU's ``balloon`` value,
        already clamped to ``ram``). The driver works in 4 KiB pages."""
        actual = max(0, min(actual, self.ram))
        self.balloon_target = (self.ram - actual) // PAGE * PAGE

    def step_balloon(self, budget: int) -> int:
        """Move the balloon toward its target by at most ``budget`` bytes (a multiple of
        1 MiB, except the last step). Returns the bytes moved (0 when the guest cannot
        give more memory: the balloon is stuck)."""
        gap = self.balloon_target - self.balloon
        if gap > 0:
            return self._inflate(min(budget, gap))
        if gap < 0:
            n = min(budget, -gap)
            self.balloon -= n
            self.free += n
            self.untouched += n  # QEMU discarded these pages when the balloon took them
            return n
        return 0

    def _inflate(self, n: int) -> int:
        if self.hint:
            got = self._reclaim_cache(n, keep=MIN_CACHE)
            got += self._take_free(n - got, self.low_watermark)
        else:
            got = self._take_free(n, self.low_watermark)
        got += self._reclaim_cache(n - got)
        got += self._swap_out(n - got)
        got += self._take_free(n - got, self.min_watermark)
        # The driver allocates whole pages.
        extra = got % PAGE
        if extra and got < n:
            self.free += extra
            got -= extra
        self.balloon += got
        return got

    def _take_free(self, n: int, floor: int) -> int:
        if n <= 0:
            return 0
        x = min(n, max(0, self.free - floor))
        self._use_free(x)
        return x

    def _use_free(self, n: int) -> None:
        self.free -= n
        if self.untouched > self.free:  # recently freed (touched) pages went first
            self.untouched = self.free

    def _reclaim_cache(self, n: int, *, keep: int = 0) -> int:
        if n <= 0:
            return 0
        x = min(n, max(0, self.cache - keep))
        self.cache -= x
        return x

    def _swap_out(self, n: int) -> int:
        if n <= 0:
            return 0
        x = min(n, self.anon, self.swap_total - self.swap_used)
        self.anon -= x
        self.swap_used += x
        self.swap_out += x
        return x

    # --- workloads ---------------------------------------------------------------------

    def workload_step(self) -> None:
        """Advance the workload by one quantum (0.1 s of guest time). Deterministic for a
        given seed and number of steps."""
        if self.workload == "compile":
            self._timed_step()
        elif self.workload == "idle":
            self._idle_step()

    def _timed_step(self) -> None:
        """One quantum of the compile workload: its memory activity, then its work, less
        what its disk reads and swapping cost (owed into the next quanta when larger)."""
        self.work_time += WORKLOAD_QUANTUM
        reads, swapped = self.disk_reads, self.swap_in + self.swap_out
        self._compile_step()
        self._stall += ((self.disk_reads - reads) / DISK_READ_RATE
                        + (self.swap_in + self.swap_out - swapped) / SWAP_RATE)
        paid = min(self._stall, WORKLOAD_QUANTUM)
        self._stall -= paid
        self.work_done += WORKLOAD_QUANTUM - paid
        if self.work_goal is not None and self.work_done >= self.work_goal - 1e-9:
            self.work_finished = self.work_time
            self.workload = "idle"  # the build is over; its jobs end as they finish

    def _idle_step(self) -> None:
        rng = self._rng
        if rng.random() < 0.1:
            self.read_file(rng.randrange(0, 2 * MiB, PAGE))
        if rng.random() < 0.05:
            got = self.alloc(rng.randrange(0, 4 * MiB, PAGE))
            self._jobs.append([rng.randint(5, 50), got])
        self._run_jobs()

    def _compile_step(self) -> None:
        """kernbench-like: parallel compiler jobs read sources (page cache grows toward the
        tree size) and write objects, each holds a burst of anonymous memory for a while;
        every so often a link step holds a larger one; every 90-150 s a 'make clean'
        frees the objects' page cache and the build starts over."""
        rng = self._rng
        self._build_left -= 1
        if self._build_left <= 0:
            # 'make clean': deleting the objects frees their page cache; the loop restarts.
            gone = min(self._objects, self.cache)
            self.cache -= gone
            self.free += gone
            self._objects = 0
            self._build_left = rng.randint(900, 1500)
        parallel = 4
        while len(self._jobs) < parallel:
            if self.cache < self._tree:  # sources: the part not in the page cache is read
                wanted = rng.randrange(1 * MiB, 6 * MiB, PAGE)
                missed = wanted * (self._tree - self.cache) // self._tree // PAGE * PAGE
                self.disk_reads += missed
                self.read_file(missed)
            before = self.cache
            self.read_file(rng.randrange(0, 1 * MiB, PAGE))  # the object file written
            self._objects += self.cache - before
            if rng.random() < 0.03:
                size = rng.randrange(150 * MiB, 400 * MiB, PAGE)
                steps = rng.randint(20, 60)
            else:
                size = rng.randrange(20 * MiB, 120 * MiB, PAGE)
                steps = rng.randint(3, 25)
            size = min(size, self.ram // 8)
            self._jobs.append([steps, self.alloc(size)])
        if self.swap_used and rng.random() < 0.2:
            self.swap_in_some(rng.randrange(0, 8 * MiB, PAGE))
        self._run_jobs()

    def _run_jobs(self) -> None:
        jobs = self._jobs
        i = 0
        while i < len(jobs):
            job = jobs[i]
            job[0] -= 1
            if job[0] <= 0:
                self.release_anon(job[1])
                jobs[i] = jobs[-1]
                jobs.pop()
            else:
                i += 1

    # --- checks ------------------------------------------------------------------------

    def check(self) -> None:
        """Raises: AssertionError: an invariant is broken (used by tests)."""
        parts = self.free + self.cache + self.anon + self.balloon + self.kernel_reserve
        assert parts == self.ram, f"parts {parts} != ram {self.ram}"
        assert min(self.free, self.cache, self.anon, self.balloon, self.swap_used) >= 0
        assert 0 <= self.untouched <= self.free, (self.untouched, self.free)
        assert self.swap_used <= self.swap_total
        assert 0 <= self.balloon_target <= self.ram
