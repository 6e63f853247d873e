"""The host's memory: ``/proc/meminfo``, ``/proc/pressure/memory`` and KSM.

The simulated host of the fake fleet is read through the same functions (it writes files in
the same formats under a directory laid out like ``/``), so ``plan``, ``auto``, ``status`` and
the dashboard cannot tell them apart. All sizes are ``int`` bytes.

    read_host(root)      HostMemory of a host rooted at ``root`` (``/`` for this machine)
    read_meminfo(path)   HostMemory from one meminfo file (no PSI, no KSM)
    host_files(host)     the files ``read_host`` reads, as text: what a simulated host writes
    host_root_for(dir)   ``<dir>/host`` when a fake fleet's simulated host is there, else ``/``
    describe_host(...)   one line for operators: RAM, available, overcommit, KSM, PSI

Every file is untrusted input: a missing ``MemTotal``, a value that is not a non-negative
number of kB, a figure larger than the RAM, a directory where a file belongs, an unreadable
file all raise ``HostReadError`` naming the file.
"""

from __future__ import annotations

import errno
import mmap
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from balloonctl.errors import HostReadError
from balloonctl.units import KiB, format_size

__all__ = [
    "KSM_DIR",
    "MEMINFO",
    "PAGE_SIZE",
    "PSI_MEMORY",
    "SIMULATED_HOST_DIR",
    "HostMemory",
    "Ksm",
    "Psi",
    "describe_host",
    "host_files",
    "host_root_for",
    "parse_ksm",
    "parse_meminfo",
    "parse_psi",
    "read_host",
    "read_meminfo",
]

# Where read_host looks, relative to the host's root.
MEMINFO: Final = "proc/meminfo"
PSI_MEMORY: Final = "proc/pressure/memory"
KSM_DIR: Final = "sys/kernel/mm/ksm"
# A fake fleet's simulated host lives in this subdirectory of its socket directory.
SIMULATED_HOST_DIR: Final = "host"
# KSM counts pages; the simulated host uses this machine's page size too.
PAGE_SIZE: Final = mmap.PAGESIZE

# Real files are a few KiB; anything much larger is not what the kernel writes.
_MAX_FILE = 64 * KiB
# No host has more memory than this (and larger numbers are garbage): 2**63 bytes in kB.
_MAX_KB = (2**63 - 1) // KiB


@dataclass(frozen=True, slots=True)
class Psi:
    """``/proc/pressure/memory``: share of time (percent, 0..100) some / all tasks stalled.

    ``*_total`` are the kernel's cumulative stall times in microseconds.
    """

    some_avg10: float
    some_avg60: float
    some_avg300: float
    full_avg10: float
    full_avg60: float
    full_avg300: float
    some_total: int = 0
    full_total: int = 0


@dataclass(frozen=True, slots=True)
class Ksm:
    """``/sys/kernel/mm/ksm``: whether it runs and how many pages it merged."""

    run: bool
    pages_shared: int
    pages_sharing: int
    page_size: int = 4096

    @property
    def saved(self) -> int:
        """Bytes saved by merging: about ``pages_sharing`` pages."""
        return self.pages_sharing * self.page_size


@dataclass(frozen=True, slots=True)
class HostMemory:
    """One reading of the host's memory.

    ``source`` names where it was read (``/proc`` or a simulated host's directory).
    """

    total: int
    available: int
    free: int
    cached: int
    anon: int
    swap_total: int
    swap_free: int
    psi: Psi | None = None
    ksm: Ksm | None = None
    source: str = "/proc"

    @property
    def available_fraction(self) -> float:
        return self.available / self.total if self.total > 0 else 0.0

    @property
    def used(self) -> int:
        """Memory not available to new work (``MemTotal - MemAvailable``)."""
        return self.total - self.available


# --- parsing ---------------------------------------------------------------------------------

_MEMINFO_LINE = re.compile(r"^(?P<key>[^:\s]+):[ \t]*(?P<value>\S+)(?:[ \t]+(?P<unit>\S+))?[ \t]*$")
_DIGITS = re.compile(r"^[0-9]+$")
_DECIMAL = re.compile(r"^[0-9]+(?:\.[0-9]+)?$")
# The meminfo names read into HostMemory (total, free, available, cached, anon, swap_*).
_MEMINFO_FIELDS: Final = frozenset(
    ("MemTotal", "MemFree", "MemAvailable", "Cached", "AnonPages", "SwapTotal", "SwapFree")
)
_REQUIRED: Final = ("MemTotal", "MemFree")


def _shown(text: str, limit: int = 40) -> str:
    """A piece of untrusted text, quoted, control characters escaped, cut short."""
    cut = text if len(text) <= limit else text[:limit] + "..."
    return repr(cut)


def parse_meminfo(text: str, *, source: str = "/proc/meminfo") -> HostMemory:
    """Parse ``/proc/meminfo`` text (values in KiB despite the ``kB`` suffix) into bytes.

    ``MemTotal`` and ``MemFree`` must be present; a kernel older than 3.14 has no
    ``MemAvailable`` (then ``MemFree + Cached``, at most ``MemTotal``); ``Cached``,
    ``AnonPages``, ``SwapTotal`` and ``SwapFree`` count as 0 when absent. Lines for other
    names are not checked beyond their ``Name: value`` shape. The result has no PSI or KSM.

    Raises:
        HostReadError: a line without ``Name: value``, a required field missing or given
            twice, a field that is not a non-negative whole number of ``kB``, a figure
            larger than ``MemTotal`` (or ``SwapFree`` above ``SwapTotal``), or no RAM.
    """
    found: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        m = _MEMINFO_LINE.match(line)
        if m is None:
            raise HostReadError(f"line {number} is not 'Name: value [kB]': {_shown(line)}",
                                path=source)
        key = m.group("key")
        if key not in _MEMINFO_FIELDS:
            continue
        if key in found:
            raise HostReadError(f"{key} appears twice (line {number})", path=source)
        value, unit = m.group("value"), m.group("unit")
        if value.startswith("-") and _DIGITS.match(value[1:]):
            raise HostReadError(f"{key} is negative ({value} kB)", path=source)
        if not _DIGITS.match(value):
            raise HostReadError(f"{key} is not a number: {_shown(value)}", path=source)
        if unit != "kB":
            raise HostReadError(f"{key} must be in kB, not {_shown(unit or '')}", path=source)
        kb = int(value)
        if kb > _MAX_KB:
            raise HostReadError(f"{key} is implausibly large ({value} kB)", path=source)
        found[key] = kb * KiB
    for key in _REQUIRED:
        if key not in found:
            raise HostReadError(f"no {key} line: not a meminfo file", path=source)
    total = found["MemTotal"]
    if total <= 0:
        raise HostReadError("MemTotal is 0", path=source)
    for key in ("MemFree", "MemAvailable", "Cached", "AnonPages"):
        if key in found and found[key] > total:
            raise HostReadError(f"{key} ({found[key] // KiB} kB) exceeds MemTotal "
                                f"({total // KiB} kB)", path=source)
    free, cached = found["MemFree"], found.get("Cached", 0)
    swap_total, swap_free = found.get("SwapTotal", 0), found.get("SwapFree", 0)
    if swap_free > swap_total:
        raise HostReadError("SwapFree exceeds SwapTotal", path=source)
    return HostMemory(
        total=total, available=found.get("MemAvailable", min(total, free + cached)), free=free,
        cached=cached, anon=found.get("AnonPages", 0), swap_total=swap_total,
        swap_free=swap_free, source=source,
    )


def parse_psi(text: str, *, source: str = "/proc/pressure/memory") -> Psi:
    """Parse ``/proc/pressure/memory``: a ``some`` and a ``full`` line, each
    ``avg10=P avg60=P avg300=P total=US`` (percentages 0..100, total in microseconds).

    Raises:
        HostReadError: a line of another kind, a line given twice, a missing ``some`` or
            ``full`` line or average, an average that is not a number from 0 to 100, a
            total that is not a non-negative integer.
    """
    lines: dict[str, tuple[float, float, float, int]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        if not words:
            continue
        kind = words[0]
        if kind not in ("some", "full"):
            raise HostReadError(f"line {number} is neither 'some' nor 'full': {_shown(line)}",
                                path=source)
        if kind in lines:
            raise HostReadError(f"two '{kind}' lines", path=source)
        pairs: dict[str, str] = {}
        for word in words[1:]:
            name, sep, value = word.partition("=")
            if not sep or not name:
                raise HostReadError(f"{kind}: {_shown(word)} is not name=value", path=source)
            pairs[name] = value
        avgs: list[float] = []
        for name in ("avg10", "avg60", "avg300"):
            avg = pairs.get(name)
            if avg is None:
                raise HostReadError(f"{kind}: no {name}", path=source)
            if not _DECIMAL.match(avg) or float(avg) > 100.0:
                raise HostReadError(f"{kind}: {name}={_shown(avg)} is not a percentage "
                                    "from 0 to 100", path=source)
            avgs.append(float(avg))
        total = pairs.get("total", "0")
        if not _DIGITS.match(total):
            raise HostReadError(f"{kind}: total={_shown(total)} is not a number of "
                                "microseconds", path=source)
        lines[kind] = (avgs[0], avgs[1], avgs[2], int(total))
    for kind in ("some", "full"):
        if kind not in lines:
            raise HostReadError(f"no '{kind}' line", path=source)
    some, full = lines["some"], lines["full"]
    return Psi(some[0], some[1], some[2], full[0], full[1], full[2],
               some_total=some[3], full_total=full[3])


def parse_ksm(
    run: str, pages_shared: str, pages_sharing: str, *, source: str = "/sys/kernel/mm/ksm",
    page_size: int = PAGE_SIZE,
) -> Ksm:
    """Parse the contents of KSM's ``run``, ``pages_shared`` and ``pages_sharing`` files.

    ``run`` is 0 (stopped, merged pages kept), 1 (running) or 2 (stopped, unmerging);
    ``Ksm.run`` is true only for 1.

    Raises:
        HostReadError: a value that is not a non-negative integer, or ``run`` not 0, 1 or 2.
    """
    def number(name: str, text: str) -> int:
        value = text.strip()
        if not _DIGITS.match(value) or len(value) > 19:
            raise HostReadError(f"{name} is not a page count: {_shown(value)}",
                                path=f"{source}/{name}")
        return int(value)

    mode = run.strip()
    if mode not in ("0", "1", "2"):
        raise HostReadError(f"run is {_shown(mode)}, not 0, 1 or 2", path=f"{source}/run")
    return Ksm(run=mode == "1", pages_shared=number("pages_shared", pages_shared),
               pages_sharing=number("pages_sharing", pages_sharing), page_size=page_size)


# --- reading ---------------------------------------------------------------------------------


def _read(path: Path, *, optional: bool = False) -> str | None:
    """The text of one kernel-style file; None when ``optional`` and it does not exist.

    Opened non-blocking (a FIFO planted where a file belongs must not hang the reader) and
    only if it is a regular file (procfs and sysfs files are).

    Raises:
        HostReadError: missing (unless optional), a directory or other non-file, unreadable,
            too large, or not ASCII text.
    """
    where = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        if optional:
            return None
        raise HostReadError("no such file", path=where) from None
    except IsADirectoryError:
        raise HostReadError("is a directory, not a file", path=where) from None
    except OSError as exc:
        # PSI compiled in but disabled (psi=0 on the kernel command line): the file opens
        # with EOPNOTSUPP. That is no PSI, not a broken host.
        if optional and exc.errno == errno.EOPNOTSUPP:
            return None
        raise HostReadError(f"cannot read: {exc.strerror or exc}", path=where) from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise HostReadError("is a directory, not a file", path=where)
        if not stat.S_ISREG(mode):
            raise HostReadError("is not a regular file", path=where)
        data = os.read(fd, _MAX_FILE + 1)
    except OSError as exc:
        if optional and exc.errno == errno.EOPNOTSUPP:
            return None
        raise HostReadError(f"cannot read: {exc.strerror or exc}", path=where) from None
    finally:
        os.close(fd)
    if len(data) > _MAX_FILE:
        raise HostReadError(f"larger than {_MAX_FILE // KiB} KiB: not a kernel file",
                            path=where)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise HostReadError("is not ASCII text", path=where) from None
    if "\0" in text:
        raise HostReadError("contains NUL bytes: not a kernel file", path=where)
    return text


def read_meminfo(path: Path = Path("/proc/meminfo")) -> HostMemory:
    """One meminfo file, without PSI or KSM.

    Raises:
        HostReadError: as ``parse_meminfo``, or the file is missing or unreadable.
    """
    text = _read(path)
    assert text is not None
    return parse_meminfo(text, source=str(path))


def _read_ksm(directory: Path) -> Ksm | None:
    run = _read(directory / "run", optional=True)
    if run is None:
        return None  # no KSM in this kernel (CONFIG_KSM=n)
    shared = _read(directory / "pages_shared")
    sharing = _read(directory / "pages_sharing")
    assert shared is not None and sharing is not None
    return parse_ksm(run, shared, sharing, source=str(directory))


def read_host(root: Path | str = Path("/")) -> HostMemory:
    """The memory of the host rooted at ``root``: ``/`` for this machine, or a simulated
    host's directory holding ``proc/meminfo``, ``proc/pressure/memory`` and
    ``sys/kernel/mm/ksm/{run,pages_shared,pages_sharing}``. Without the PSI file (or with
    PSI disabled) ``psi`` is None; without KSM's ``run`` file ``ksm`` is None.

    Raises:
        HostReadError: meminfo is missing; any file present is unreadable, not a file, or
            malformed (as ``parse_meminfo``, ``parse_psi``, ``parse_ksm``); ``run`` exists
            but a page count file does not. The message names the file.
    """
    root = Path(root)
    meminfo = root / MEMINFO
    text = _read(meminfo)
    assert text is not None
    host = parse_meminfo(text, source=str(meminfo))
    psi_path = root / PSI_MEMORY
    psi_text = _read(psi_path, optional=True)
    psi = None if psi_text is None else parse_psi(psi_text, source=str(psi_path))
    ksm = _read_ksm(root / KSM_DIR)
    source = "/proc" if root == Path("/") else str(root)
    return replace(host, psi=psi, ksm=ksm, source=source)


def host_root_for(directory: str | Path | None) -> Path:
    """The root of the host a directory of sockets runs on: ``<directory>/host`` when a fake
    fleet's simulated host is there (``host/proc/meminfo`` exists), else ``/`` (this
    machine). Only looks at the file system, reads nothing."""
    if directory:
        root = Path(directory).expanduser() / SIMULATED_HOST_DIR
        if (root / MEMINFO).exists():
            return root
    return Path("/")


# --- writing (the simulated host) ------------------------------------------------------------


def host_files(host: HostMemory) -> Mapping[str, str]:
    """The files ``read_host`` reads, relative to the root, in the kernel's formats: what a
    simulated host writes so that it reads back as ``host`` (sizes rounded down to KiB,
    averages to hundredths). No PSI or KSM file when ``host`` has none."""
    rows = [
        ("MemTotal", host.total), ("MemFree", host.free), ("MemAvailable", host.available),
        ("Buffers", 0), ("Cached", host.cached), ("SwapCached", 0),
        ("SwapTotal", host.swap_total), ("SwapFree", host.swap_free),
        ("AnonPages", host.anon),
    ]
    files = {MEMINFO: "".join(f"{name + ':':<16}{value // KiB:>8} kB\n" for name, value in rows)}
    psi = host.psi
    if psi is not None:
        files[PSI_MEMORY] = (
            f"some avg10={psi.some_avg10:.2f} avg60={psi.some_avg60:.2f} "
            f"avg300={psi.some_avg300:.2f} total={psi.some_total}\n"
            f"full avg10={psi.full_avg10:.2f} avg60={psi.full_avg60:.2f} "
            f"avg300={psi.full_avg300:.2f} total={psi.full_total}\n"
        )
    ksm = host.ksm
    if ksm is not None:
        files[f"{KSM_DIR}/run"] = "1\n" if ksm.run else "0\n"
        files[f"{KSM_DIR}/pages_shared"] = f"{ksm.pages_shared}\n"
        files[f"{KSM_DIR}/pages_sharing"] = f"{ksm.pages_sharing}\n"
    return files


# --- describing ------------------------------------------------------------------------------


def describe_host(host: HostMemory, guest_ram_total: int) -> str:
    """One line about the host for operators (the status and dashboard header share it)::

        host 8 GiB, available 2 GiB (25 %), guests 12 GiB (1.50x), KSM saved 300 MiB,
        PSI some 4.20 % full 1.10 % (avg10)

    ``guest_ram_total`` is the sum of the guests' RAM; its ratio to the host's RAM is the
    overcommit ratio. KSM reads ``KSM -`` when the kernel has none, ``KSM off`` when it is
    stopped and holds nothing; PSI reads ``PSI -`` when the kernel reports none.
    """
    pct = round(100 * host.available_fraction)
    ratio = guest_ram_total / host.total if host.total > 0 else 0.0
    parts = [
        f"host {format_size(host.total)}",
        f"available {format_size(host.available)} ({pct} %)",
        f"guests {format_size(guest_ram_total)} ({ratio:.2f}x)",
    ]
    ksm = host.ksm
    if ksm is None:
        parts.append("KSM -")
    elif not ksm.run and ksm.saved == 0:
        parts.append("KSM off")
    else:
        stopped = "" if ksm.run else " (stopped)"
        parts.append(f"KSM saved {format_size(ksm.saved)}{stopped}")
    psi = host.psi
    if psi is None:
        parts.append("PSI -")
    else:
        parts.append(f"PSI some {psi.some_avg10:.2f} % full {psi.full_avg10:.2f} % (avg10)")
    return ", ".join(parts)
