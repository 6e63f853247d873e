"""The one model of a VM's balloon state, shared by the CLI, the dashboard and HTTP.

All sizes are ``int`` bytes. ``BalloonState.to_json()`` keys are API: scripts parse them.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from balloonctl.errors import UnsafeTarget
from balloonctl.units import MiB, format_exact, format_size

__all__ = [
    "HARD_MINIMUM",
    "HOST_SEP",
    "JSON_KEYS",
    "PRESSURE_MAJOR_FAULTS",
    "PRESSURE_SWAP",
    "SCHEMA",
    "STAT_NOT_REPORTED",
    "BalloonState",
    "DeviceFeatures",
    "GuestStats",
    "HintMethod",
    "HintMode",
    "HintState",
    "Owner",
    "TargetChange",
    "VmRef",
    "VmStatus",
    "default_floor",
    "derive",
    "seconds_between",
    "split_host_name",
    "validate_target",
]

# QEMU reports a stat the guest never sent as u64 -1.
STAT_NOT_REPORTED = 2**64 - 1

# Even a forced target never goes below this: a Linux guest squeezed further thrashes or
# OOM-kills its own init.
HARD_MINIMUM = 128 * MiB

# A VM of one of several ``balloonctl serve`` hosts is named ``HOST/VM`` (``http.hosts``);
# a VM's own name never holds a "/" (it is a socket file name or a libvirt domain name).
HOST_SEP = "/"


def split_host_name(name: str) -> tuple[str | None, str]:
    """``("hv1", "vm1")`` for ``"hv1/vm1"``; ``(None, name)`` for a name without a host."""
    host, sep, vm = name.partition(HOST_SEP)
    return (host, vm) if sep else (None, name)


# The version of the snapshot and event JSON (``BalloonState.to_json``, ``watch``'s event
# lines): raised when a key changes meaning or goes away.
SCHEMA = 1

# A guest is under memory pressure when, between two stats samples, it swaps (in + out) at
# least this many bytes per second, or takes at least this many major faults per second.
# 1 MiB/s is 256 pages/s: sustained, a guest that pages like that is short of memory; a
# major fault is a read from disk (swap or an evicted file page) that a process waited for.
PRESSURE_SWAP = 1 * MiB
PRESSURE_MAJOR_FAULTS = 100

# How far from the target ``actual`` may sit and still count as converged. The guest moves
# in 1 MiB steps (4 KiB pages batched by the driver) and may stop a few pages short.
CONVERGED_TOLERANCE = 2 * MiB


def default_floor(guest_ram: int) -> int:
    """The default safe floor: the larger of 256 MiB and 10% of guest RAM."""
    return max(256 * MiB, guest_ram // 10)


def validate_target(
    target: int,
    *,
    guest_ram: int,
    minimum: int | None = None,
    maximum: int | None = None,
    force: bool = False,
    vm: str | None = None,
) -> int:
    """Check a resolved target against the VM's limits before it is sent to QEMU.

    QEMU silently clamps targets above guest RAM, so balloonctl refuses them itself.
    ``minimum`` is the VM's configured floor (``default_floor`` when ``None``); ``force``
    allows going below it but never below ``HARD_MINIMUM``. ``maximum`` caps the target
    below guest RAM when configured.

    Raises:
        UnsafeTarget: the target is above guest RAM or the VM's maximum, below the floor
            without ``force``, or below the hard minimum.
    """
    ceiling = guest_ram if maximum is None else min(maximum, guest_ram)
    floor = default_floor(guest_ram) if minimum is None else minimum
    if target > ceiling:
        what = "guest RAM" if ceiling == guest_ram else "the VM's maximum"
        shown, limit = _apart(target, ceiling)
        raise UnsafeTarget(f"target {shown} is above {what} ({limit})", vm=vm, target=target)
    if target < HARD_MINIMUM:
        shown, limit = _apart(target, HARD_MINIMUM)
        raise UnsafeTarget(f"target {shown} is below the hard minimum {limit}, even with --force",
                           vm=vm, target=target)
    if target < floor and not force:
        shown, limit = _apart(target, floor)
        raise UnsafeTarget(
            f"target {shown} is below the safe floor {limit} (use --force to go lower)",
            vm=vm, target=target,
        )
    return target


def _apart(target: int, limit: int) -> tuple[str, str]:
    """The two sizes as a refusal shows them: rounded, unless rounding makes them look
    equal (2049 MiB is not "2 GiB is above 2 GiB"); then exactly, in bytes at worst."""
    if format_size(target) != format_size(limit):
        return format_size(target), format_size(limit)
    shown, limit_shown = format_exact(target, with_bytes=False), format_exact(limit,
                                                                              with_bytes=False)
    if not shown.startswith("~") and not limit_shown.startswith("~"):
        return shown, limit_shown
    return f"{target} bytes", f"{limit} bytes"


class HintMode(enum.StrEnum):
    """How the cache-first hint is honoured on a VM."""

    DEVICE = "device"  # the balloon device has a bool QOM property 'reclaim-cache-first'
    AGENT = "agent"  # stock QEMU: the guest agent drops clean page cache before inflating
    UNSUPPORTED = "unsupported"  # neither
    UNKNOWN = "unknown"  # not probed yet (or the VM is unreachable)


class HintMethod(enum.StrEnum):
    """How the guest agent reclaims page cache for the agent-mode hint."""

    RECLAIM = "reclaim"  # cgroup v2 memory.reclaim: as much as the inflation needs
    DROP = "drop"  # echo 1 > /proc/sys/vm/drop_caches: the whole clean page cache


class Owner(enum.StrEnum):
    """Who set a VM's balloon target, as far as balloonctl can tell (``balloonctl.targets``).
    A VM balloonctl never set (in this run of the VM) has no owner (None)."""

    BALLOONCTL = "balloonctl"  # balloonctl's remembered target stands
    FOREIGN = "foreign"  # another writer moved the balloon; left alone until taken back


@dataclass(frozen=True, slots=True)
class TargetChange:
    """A target balloonctl has just sent (``BalloonClient``'s ``recorder`` sees each one):
    ``previous`` is its own standing target before, else ``actual`` then (None: unknown)."""

    vm: str
    qmp: str
    previous: int | None
    target: int


class VmStatus(enum.StrEnum):
    """One word for a VM's condition, as the dashboard and ``status`` show it."""

    OK = "ok"
    CONVERGING = "converging"
    PRESSURE = "pressure"  # the guest swaps or faults heavily (see PRESSURE_SWAP)
    STALE = "stale"  # the guest's stats are frozen: polling off, or no report lately
    NO_DRIVER = "no-driver"  # balloon device present, guest driver not loaded
    NO_DEVICE = "no-device"
    ERROR = "error"  # reachable, but QEMU answered nonsense or refused a read (see ``error``)
    BUSY = "busy"  # another QMP client holds the socket
    UNREACHABLE = "unreachable"


@dataclass(frozen=True, slots=True)
class VmRef:
    """A VM as the inventory knows it."""

    name: str
    qmp: str  # unix socket path, or "host:port"
    qga: str | None = None  # guest-agent socket path
    minimum: int | None = None  # safe floor; default_floor(guest_ram) when None
    maximum: int | None = None
    shares: int = 1000
    hint: bool | None = None  # preferred cache-first hint state, None = leave as is
    hint_mount_cgroup: bool | None = None  # the hint may mount cgroup2 in the guest
    source: str = "cli"  # where this VM came from: cli, dir, config, proxmox, libvirt
    backend: str = "qmp"  # how balloonctl reaches it: "qmp" (the socket) or "libvirt"
    uri: str | None = None  # the libvirt connection URI (backend "libvirt"); qmp then names
    # the domain as "URI#NAME" for display and balloonctl's state


@dataclass(frozen=True, slots=True)
class GuestStats:
    """The balloon device's ``guest-stats`` QOM property (parsed by
    ``balloonctl.replies.guest_stats``). ``None`` means not reported.

    Memory values and swap in/out are bytes (the Linux driver reports swap as
    ``pages_to_bytes(PSWPIN/PSWPOUT)``); faults are counts. ``last_update`` is host
    wall-clock whole seconds; 0 means the guest driver never reported.
    """

    last_update: int = 0
    swap_in: int | None = None
    swap_out: int | None = None
    major_faults: int | None = None
    minor_faults: int | None = None
    free_memory: int | None = None
    total_memory: int | None = None
    available_memory: int | None = None
    disk_caches: int | None = None
    htlb_pgalloc: int | None = None
    htlb_pgfail: int | None = None
    extra: Mapping[str, int] = field(default_factory=dict)

    @property
    def reported(self) -> bool:
        """True once the guest driver has pushed at least one sample."""
        return self.last_update != 0

    def age(self, now: float | None = None) -> float | None:
        """Seconds since the guest last reported, or None if it never did."""
        if not self.reported:
            return None
        return max(0.0, (time.time() if now is None else now) - self.last_update)


@dataclass(frozen=True, slots=True)
class DeviceFeatures:
    """Fixed properties of the balloon device (set at QEMU start, read with qom-get)."""

    deflate_on_oom: bool | None = None
    free_page_reporting: bool | None = None
    free_page_hint: bool | None = None


@dataclass(frozen=True, slots=True)
class HintState:
    """The cache-first hint, reported honestly.

    ``released`` is how much page cache the last agent-mode reclaim released (bytes), when
    known; ``method`` how agent mode reclaims on this VM (None: not agent mode, or not known
    yet), and ``detail`` says why.
    """

    mode: HintMode = HintMode.UNKNOWN
    enabled: bool = False
    detail: str = ""
    released: int | None = None
    method: HintMethod | None = None

    @property
    def honoured_by(self) -> str | None:
        """How the hint is honoured, in one word: ``reclaim`` or ``drop`` (agent mode, by
        ``method``), ``device`` (the patched device); None when it is not (or not known)."""
        if self.mode is HintMode.DEVICE:
            return HintMode.DEVICE.value
        return None if self.method is None else self.method.value


@dataclass(frozen=True, slots=True)
class BalloonState:
    """One snapshot of one VM's balloon. ``error`` is set when the VM could not be read."""

    name: str
    qmp: str
    reachable: bool = False
    error: str | None = None
    error_kind: str | None = None  # the BalloonError class name, e.g. "SocketBusy"
    actual: int | None = None
    guest_ram: int | None = None
    target: int | None = None  # last target balloonctl set, if known
    floor: int | None = None  # the safe floor that applies to this VM
    maximum: int | None = None  # the VM's configured maximum target (guest RAM when None)
    stats: GuestStats | None = None
    polling_interval: int | None = None
    has_device: bool = True
    features: DeviceFeatures = field(default_factory=DeviceFeatures)
    hint: HintState = field(default_factory=HintState)
    taken_at: float = field(default_factory=time.time)
    owner: Owner | None = None  # who set the target (balloonctl.targets); None: nobody known
    # When the balloon last moved, as far as balloonctl knows (it set a target, or saw
    # ``actual`` change between two snapshots); wall-clock seconds.
    moved_at: float | None = None
    # Between the guest's last two stats samples (``derive``): swap in + out, bytes per
    # second, and major faults per second; None with fewer than two samples.
    swap_rate: float | None = None
    major_fault_rate: float | None = None

    @property
    def driver_ready(self) -> bool:
        return self.stats is not None and self.stats.reported

    @property
    def stats_age(self) -> float | None:
        return None if self.stats is None else self.stats.age(self.taken_at)

    @property
    def ballooned(self) -> int | None:
        """Memory held by the balloon (guest RAM minus actual)."""
        if self.guest_ram is None or self.actual is None:
            return None
        return max(0, self.guest_ram - self.actual)

    @property
    def stale(self) -> bool:
        """The guest's stats are frozen: polling is off; or the last report is older than
        three polling intervals (+2 s); or it predates the balloon's last move although
        the guest has had a polling interval (+2 s) to report since."""
        stats = self.stats
        if stats is None or not stats.reported or self.polling_interval is None:
            return False
        if self.polling_interval == 0:
            return True
        slack = self.polling_interval + 2
        age = self.taken_at - stats.last_update
        if age > 3 * self.polling_interval + 2:
            return True
        moved = self.moved_at
        return moved is not None and stats.last_update < moved and (
            self.taken_at - moved > slack)

    @property
    def pressure(self) -> bool:
        """The guest swaps at least ``PRESSURE_SWAP`` bytes/s or takes at least
        ``PRESSURE_MAJOR_FAULTS`` major faults/s (between its last two samples)."""
        return (self.swap_rate or 0.0) >= PRESSURE_SWAP or (
            self.major_fault_rate or 0.0) >= PRESSURE_MAJOR_FAULTS

    @property
    def failed(self) -> bool:
        """The VM could not be read: unreachable, busy, or in the ``error`` state (QEMU
        answered nonsense or refused a read). ``error_kind`` says why."""
        return not self.reachable or self.status is VmStatus.ERROR

    @property
    def converging(self) -> bool:
        if self.target is None or self.actual is None:
            return False
        return abs(self.actual - self.target) > CONVERGED_TOLERANCE

    @property
    def status(self) -> VmStatus:
        if not self.reachable:
            return VmStatus.BUSY if self.error_kind == "SocketBusy" else VmStatus.UNREACHABLE
        if not self.has_device:
            return VmStatus.NO_DEVICE
        if self.error is not None:
            return VmStatus.ERROR
        if not self.driver_ready:
            return VmStatus.NO_DRIVER
        if self.pressure:
            return VmStatus.PRESSURE
        if self.converging:
            return VmStatus.CONVERGING
        if self.stale:
            return VmStatus.STALE
        return VmStatus.OK

    def with_changes(self, **changes: Any) -> BalloonState:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """A flat dict with stable keys (``JSON_KEYS``), bytes as ints, ``None`` as null."""
        s = self.stats or GuestStats()
        age = self.stats_age
        return {
            "name": self.name,
            "qmp": self.qmp,
            "status": self.status.value,
            "reachable": self.reachable,
            "error": self.error,
            "error_kind": self.error_kind,
            "actual": self.actual,
            "guest_ram": self.guest_ram,
            "ballooned": self.ballooned,
            "target": self.target,
            "floor": self.floor,
            "maximum": self.maximum,
            "free_memory": s.free_memory,
            "disk_caches": s.disk_caches,
            "available_memory": s.available_memory,
            "total_memory": s.total_memory,
            "swap_in": s.swap_in,
            "swap_out": s.swap_out,
            "major_faults": s.major_faults,
            "minor_faults": s.minor_faults,
            "last_update": s.last_update if s.reported else None,
            "stats_age": None if age is None else round(age, 1),
            "driver_ready": self.driver_ready,
            "polling_interval": self.polling_interval,
            "deflate_on_oom": self.features.deflate_on_oom,
            "free_page_reporting": self.features.free_page_reporting,
            "free_page_hint": self.features.free_page_hint,
            "hint_mode": self.hint.mode.value,
            "hint_enabled": self.hint.enabled,
            "hint_detail": self.hint.detail,
            "hint_released": self.hint.released,
            "hint_method": None if self.hint.method is None else self.hint.method.value,
            "owner": None if self.owner is None else self.owner.value,
            "swap_rate": None if self.swap_rate is None else round(self.swap_rate, 1),
            "major_fault_rate": (None if self.major_fault_rate is None
                                 else round(self.major_fault_rate, 1)),
            "moved_at": None if self.moved_at is None else round(self.moved_at, 3),
            "time": round(self.taken_at, 3),
            "schema": SCHEMA,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BalloonState:
        """Inverse of ``to_json`` (used by the HTTP client). Reads ``taken_at`` for ``time``
        from a server older than schema 1."""
        stats = None
        if data.get("last_update") is not None:
            stats = GuestStats(
                last_update=int(data["last_update"]),
                swap_in=data.get("swap_in"),
                swap_out=data.get("swap_out"),
                major_faults=data.get("major_faults"),
                minor_faults=data.get("minor_faults"),
                free_memory=data.get("free_memory"),
                total_memory=data.get("total_memory"),
                available_memory=data.get("available_memory"),
                disk_caches=data.get("disk_caches"),
            )
        return cls(
            name=data["name"],
            qmp=data["qmp"],
            reachable=bool(data.get("reachable")),
            error=data.get("error"),
            error_kind=data.get("error_kind"),
            actual=data.get("actual"),
            guest_ram=data.get("guest_ram"),
            target=data.get("target"),
            floor=data.get("floor"),
            maximum=data.get("maximum"),
            stats=stats,
            polling_interval=data.get("polling_interval"),
            has_device=data.get("status") != VmStatus.NO_DEVICE.value,
            features=DeviceFeatures(
                deflate_on_oom=data.get("deflate_on_oom"),
                free_page_reporting=data.get("free_page_reporting"),
                free_page_hint=data.get("free_page_hint"),
            ),
            hint=HintState(
                mode=HintMode(data.get("hint_mode", "unknown")),
                enabled=bool(data.get("hint_enabled")),
                detail=data.get("hint_detail") or "",
                released=data.get("hint_released"),
                method=HintMethod(data["hint_method"]) if data.get("hint_method") else None,
            ),
            taken_at=float(data.get("time", data.get("taken_at", time.time()))),
            moved_at=data.get("moved_at"),
            swap_rate=data.get("swap_rate"),
            major_fault_rate=data.get("major_fault_rate"),
            owner=Owner(data["owner"]) if data.get("owner") in ("balloonctl", "foreign") else None,
        )


JSON_KEYS: tuple[str, ...] = tuple(BalloonState(name="", qmp="").to_json())


def derive(previous: BalloonState | None, state: BalloonState) -> BalloonState:
    """``state`` with what only two snapshots of the same VM tell (pure): ``moved_at``
    (``actual`` changed since ``previous``, or carried over) and the swap and major fault
    rates between the guest's last two stats samples (kept while no new sample came)."""
    if previous is None or not state.reachable:
        return state
    changes: dict[str, Any] = {}
    moved = [t for t in (state.moved_at, previous.moved_at) if t is not None]
    if previous.actual is not None and state.actual is not None and (
            previous.actual != state.actual):
        moved.append(state.taken_at)
    if moved:
        changes["moved_at"] = max(moved)
    old, new = previous.stats, state.stats
    if old is not None and new is not None and old.reported and new.reported:
        dt = seconds_between(old, new)
        if dt is not None:
            changes["swap_rate"] = _rate(old.swap_in, old.swap_out, new.swap_in,
                                         new.swap_out, dt)
            changes["major_fault_rate"] = _rate(old.major_faults, 0, new.major_faults, 0, dt)
        elif new == old:  # the same sample: the rates of the last two still hold
            changes["swap_rate"] = previous.swap_rate
            changes["major_fault_rate"] = previous.major_fault_rate
    return replace(state, **changes) if changes else state


def seconds_between(old: GuestStats, new: GuestStats) -> int | None:
    """Seconds between two reported stats samples over the guest's own report times
    (``last_update``), or None when they are the same sample or time went back.

    QEMU stamps a sample in whole seconds, so two different samples can carry the same
    second (the driver's first push and a polling timer armed at once): they count as one
    second apart, which makes a rate over them a lower bound, never a missed one."""
    dt = new.last_update - old.last_update
    if dt > 0:
        return dt
    return 1 if dt == 0 and new != old else None


def _rate(a0: int | None, b0: int | None, a1: int | None, b1: int | None,
          dt: int) -> float | None:
    if a0 is None or b0 is None or a1 is None or b1 is None:
        return None
    # Counters restart from zero when the guest reboots: no rate across that.
    delta = (a1 + b1) - (a0 + b0)
    return None if delta < 0 else delta / dt
