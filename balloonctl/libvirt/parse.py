"""Everything libvirt hands back, parsed in one place: the domain XML, ``virDomainMemoryStats``
and libvirt's errors (translated into balloonctl's tree here and nowhere else).

Pure: no libvirt import, so it is tested with malformed inputs without a daemon. libvirt's
error numbers are its stable ABI (``virErrorNumber``); ``tests`` check them against the
binding when it is installed.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from balloonctl.errors import (
    AgentError,
    BalloonError,
    DomainNotRunning,
    LibvirtDenied,
    LibvirtUnavailable,
    NoBalloonDevice,
    QMPCommandError,
    QMPTimeout,
)
from balloonctl.model import GuestStats
from balloonctl.units import KiB

__all__ = [
    "NO_BALLOON_MESSAGE",
    "DomainXml",
    "LibvirtFailure",
    "parse_domain_xml",
    "parse_memory_stats",
    "translate",
]

NO_BALLOON_MESSAGE: Final = (
    "domain has no virtio balloon device; add <memballoon model='virtio'/> to its XML "
    "(virsh edit) and restart it"
)

# virErrorNumber values (libvirt's stable ABI).
ERR_INTERNAL_ERROR: Final = 1
ERR_NO_SUPPORT: Final = 3
ERR_NO_CONNECT: Final = 5
ERR_INVALID_ARG: Final = 8
ERR_OPERATION_FAILED: Final = 9
ERR_SYSTEM_ERROR: Final = 38
ERR_RPC: Final = 39
ERR_NO_DOMAIN: Final = 42
ERR_AUTH_FAILED: Final = 45
ERR_OPERATION_INVALID: Final = 55
ERR_OPERATION_TIMEOUT: Final = 68
ERR_AGENT_UNRESPONSIVE: Final = 86
ERR_ACCESS_DENIED: Final = 88
ERR_AUTH_UNAVAILABLE: Final = 94
ERR_AGENT_UNSYNCED: Final = 97

# libvirt's names for the balloon stats (virDomainMemoryStatTags) -> GuestStats fields, and
# whether the value is KiB (memory, swap) or a count (faults).
_STATS: Final[Mapping[str, tuple[str, bool]]] = {
    "swap_in": ("swap_in", True),
    "swap_out": ("swap_out", True),
    "major_fault": ("major_faults", False),
    "minor_fault": ("minor_faults", False),
    "unused": ("free_memory", True),  # stat-free-memory
    "available": ("total_memory", True),  # stat-total-memory
    "usable": ("available_memory", True),  # stat-available-memory
    "disk_caches": ("disk_caches", True),
    "hugetlb_pgalloc": ("htlb_pgalloc", False),
    "hugetlb_pgfail": ("htlb_pgfail", False),
}
# Not guest stats: the balloon's actual size, the host's view of the process, the stamp.
_NOT_GUEST: Final = frozenset({"actual", "rss", "last_update"})

_UNITS: Final[Mapping[str, int]] = {
    "b": 1, "bytes": 1, "k": KiB, "kib": KiB, "m": KiB**2, "mib": KiB**2,
    "g": KiB**3, "gib": KiB**3, "t": KiB**4, "tib": KiB**4,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
}


class _BadReply(BalloonError):
    """Raised inside the parsers; turned into a QMPCommandError naming the call."""


@dataclass(frozen=True, slots=True)
class DomainXml:
    """What balloonctl needs from a running domain's XML (``virDomainGetXMLDesc``).

    ``balloon_model`` is None without a ``<memballoon>`` element and "none" when the
    balloon is turned off; ``stats_period`` is the guest stats polling interval (0 = off).
    """

    max_memory: int  # <memory>, bytes: the guest RAM the balloon counts from
    current_memory: int | None  # <currentMemory>, bytes: libvirt's view of the balloon
    balloon_model: str | None
    autodeflate: bool | None
    free_page_reporting: bool | None
    stats_period: int
    qga_channel: bool  # an org.qemu.guest_agent.0 virtio channel is configured

    @property
    def has_balloon(self) -> bool:
        return self.balloon_model is not None and self.balloon_model != "none"


def _bytes(elem: ET.Element | None, what: str) -> int | None:
    if elem is None:
        return None
    text = (elem.text or "").strip()
    unit = elem.get("unit", "KiB").strip().lower()
    factor = _UNITS.get(unit)
    if factor is None:
        raise _BadReply(f"{what} has an unknown unit {elem.get('unit')!r}")
    if not text.isascii() or not text.isdigit():
        raise _BadReply(f"{what} is not a whole number: {text!r}")
    return int(text) * factor


def _onoff(value: str | None, what: str) -> bool | None:
    if value is None:
        return None
    if value in ("on", "yes"):
        return True
    if value in ("off", "no"):
        return False
    raise _BadReply(f"{what}={value!r} is neither 'on' nor 'off'")


def parse_domain_xml(text: Any, *, vm: str | None = None) -> DomainXml:
    """Parse ``virDomainGetXMLDesc`` output.

    Raises:
        QMPCommandError: not XML, not a ``<domain>``, no ``<memory>``, or a field of the
            wrong shape (the message says which).
    """
    try:
        if not isinstance(text, str):
            raise _BadReply(f"expected XML text, got {type(text).__name__}")
        try:
            root = ET.fromstring(text)
        except ET.ParseError as exc:
            raise _BadReply(f"not XML ({exc})") from None
        if root.tag != "domain":
            raise _BadReply(f"root element is <{root.tag}>, not <domain>")
        max_memory = _bytes(root.find("memory"), "<memory>")
        if max_memory is None or max_memory <= 0:
            raise _BadReply("no positive <memory>")
        current = _bytes(root.find("currentMemory"), "<currentMemory>")
        balloon = root.find("devices/memballoon")
        model = autodeflate = reporting = None
        period = 0
        if balloon is not None:
            model = balloon.get("model")
            if not model:
                raise _BadReply("<memballoon> has no model")
            autodeflate = _onoff(balloon.get("autodeflate"), "memballoon autodeflate")
            reporting = _onoff(balloon.get("freePageReporting"),
                               "memballoon freePageReporting")
            stats = balloon.find("stats")
            if stats is not None:
                raw = (stats.get("period") or "").strip()
                if not raw.isascii() or not raw.isdigit():
                    raise _BadReply(f"memballoon stats period={raw!r} is not a whole number")
                period = int(raw)
        qga = any(t.get("name") == "org.qemu.guest_agent.0"
                  for t in root.findall("devices/channel/target"))
        return DomainXml(max_memory, current, model, autodeflate, reporting, period, qga)
    except _BadReply as exc:
        raise QMPCommandError(f"bad domain XML from libvirt: {exc.message}", vm=vm,
                              error_class="BadReply", sent="virDomainGetXMLDesc",
                              received=text if isinstance(text, str) else repr(text)) from None


def parse_memory_stats(raw: Any, *, vm: str | None = None) -> tuple[int, GuestStats]:
    """Parse ``virDomainMemoryStats`` (libvirt's names, KiB) into ``(actual, GuestStats)``
    in bytes. A stat the guest never reported is absent from libvirt's dict (None here);
    unknown tags land in ``extra`` as they are.

    Raises:
        QMPCommandError: not a dict, no integer ``actual``, or a non-integer value.
    """
    try:
        if not isinstance(raw, Mapping):
            raise _BadReply(f"expected a dict, got {type(raw).__name__}")
        values: dict[str, int] = {}
        for key, value in raw.items():
            if not isinstance(key, str):
                raise _BadReply(f"stat name {key!r} is not a string")
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise _BadReply(f"stat {key!r} is {value!r}, not a non-negative integer")
            values[key] = value
        if "actual" not in values:
            raise _BadReply("no 'actual' (the balloon's size)")
        known: dict[str, int | None] = {}
        extra: dict[str, int] = {}
        for key, value in values.items():
            field = _STATS.get(key)
            if field is not None:
                name, in_kib = field
                known[name] = value * KiB if in_kib else value
            elif key not in _NOT_GUEST:
                extra[key] = value
        stats = GuestStats(last_update=values.get("last_update", 0), extra=extra, **known)
        return values["actual"] * KiB, stats
    except _BadReply as exc:
        raise QMPCommandError(f"bad memory stats from libvirt: {exc.message}", vm=vm,
                              error_class="BadReply", sent="virDomainMemoryStats",
                              received=dict(raw) if isinstance(raw, Mapping) else repr(raw),
                              ) from None


@dataclass(frozen=True, slots=True)
class LibvirtFailure:
    """A ``libvirt.libvirtError`` as plain data: its code, its message, and where it came
    from (``op`` is the API call, ``uri`` the connection, ``domain`` the domain's name)."""

    code: int
    message: str
    op: str
    uri: str
    domain: str | None = None


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]


def translate(failure: LibvirtFailure, *, vm: str | None = None) -> BalloonError:
    """The one translation of libvirt's errors into balloonctl's tree.

    Opening the connection: permission problems are ``LibvirtDenied``, anything else
    ``LibvirtUnavailable``. Later: a missing or stopped domain is ``DomainNotRunning``; the
    guest agent not answering is ``AgentError``; a lost daemon ``LibvirtUnavailable``; a
    timeout ``QMPTimeout``; the rest ``QMPCommandError`` keeping the call and the message.
    """
    code, msg, uri, dom = failure.code, _first_line(failure.message), failure.uri, failure.domain
    lowered = msg.lower()
    denied = code in (ERR_AUTH_FAILED, ERR_AUTH_UNAVAILABLE, ERR_ACCESS_DENIED) or (
        "permission denied" in lowered)
    if failure.op == "open":
        if denied:
            return LibvirtDenied(
                f"libvirt refuses access to {uri}: {msg} (run as root, join the libvirt "
                "group, or use qemu:///session for your own domains)", vm=vm)
        return LibvirtUnavailable(
            f"cannot open libvirt connection {uri}: {msg} (is libvirtd running?)", vm=vm)
    if denied:
        return LibvirtDenied(f"libvirt refuses {failure.op} on {uri}: {msg}", vm=vm)
    if code == ERR_NO_DOMAIN or (code == ERR_OPERATION_INVALID and "not running" in lowered):
        what = f"domain {dom!r}" if dom else "the domain"
        return DomainNotRunning(f"{what} is not running at {uri} ({msg})", vm=vm)
    if code in (ERR_AGENT_UNRESPONSIVE, ERR_AGENT_UNSYNCED) or "guest agent" in lowered:
        return AgentError(f"the guest agent is not responding through libvirt: {msg} "
                          "(is qemu-ga running in the guest?)", vm=vm)
    if code in (ERR_NO_CONNECT, ERR_RPC) or (
            code == ERR_SYSTEM_ERROR and ("end of file" in lowered or "broken pipe" in lowered
                                          or "connection reset" in lowered)):
        return LibvirtUnavailable(f"lost the libvirt connection {uri} during {failure.op}: "
                                  f"{msg}", vm=vm)
    if code == ERR_OPERATION_TIMEOUT:
        return QMPTimeout(f"libvirt timed out in {failure.op}: {msg}", vm=vm)
    if failure.op == "setMemoryFlags" and "balloon" in lowered:
        return NoBalloonDevice(NO_BALLOON_MESSAGE, vm=vm, error_class="NoBalloon",
                               sent=failure.op, received=msg)
    return QMPCommandError(f"libvirt refused {failure.op}: {msg}", vm=vm,
                           error_class=f"libvirt:{code}", sent=failure.op, received=msg)
