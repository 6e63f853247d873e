"""LibvirtClient: one libvirt domain's balloon, with the public interface of
``balloonctl.qmp.BalloonClient`` and the same ``BalloonState``.

libvirt holds each domain's QMP socket for the domain's lifetime, so the way in is its API:
``virDomainSetMemoryFlags`` (live; KiB) for the target, which also keeps the domain's live
``<currentMemory>`` right; ``virDomainMemoryStats`` for ``actual`` and the guest's stats;
``virDomainSetMemoryStatsPeriod`` for polling; the domain XML for guest RAM (``<memory>``)
and the device's features; ``virDomainQemuAgentCommand`` for the guest agent (the
cache-first hint in agent mode); domain events for ``events()``.

What is not about libvirt is shared with ``BalloonClient``: what balloonctl remembers
(``balloonctl.targets.RememberedTargets``, keyed by ``URI#DOMAIN`` and tied to one run of
the domain: its UUID and its id, which libvirt gives anew at every start), the cache-first
hint (``balloonctl.cachefirst.CacheFirst``, with ``LibvirtQga`` for the guest agent) and
the wait for a target (``balloonctl.converge``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, TypeVar

from balloonctl import converge
from balloonctl.cachefirst import CacheFirst
from balloonctl.errors import (
    AgentExecBlocked,
    ConnectFailed,
    Disconnected,
    DomainNotRunning,
    NoBalloonDevice,
    QMPCommandError,
)
from balloonctl.libvirt import binding
from balloonctl.libvirt.events import CLOSED, domain_events
from balloonctl.libvirt.parse import (
    NO_BALLOON_MESSAGE,
    DomainXml,
    parse_domain_xml,
    parse_memory_stats,
)
from balloonctl.libvirt.qga import LibvirtQga
from balloonctl.model import (
    BalloonState,
    DeviceFeatures,
    GuestStats,
    HintState,
    TargetChange,
    VmRef,
    default_floor,
)
from balloonctl.qmpsession import BalloonEvent, Trace
from balloonctl.snapshots import TARGET_STALE_AFTER, ref_settings, take_snapshot
from balloonctl.store import MemoryStore, Store
from balloonctl.targets import RememberedTargets
from balloonctl.units import KiB, TargetSpec

__all__ = ["HINT_UNSUPPORTED_MESSAGE", "LibvirtClient", "LibvirtQga", "LibvirtRun",
           "address_of"]

T = TypeVar("T")

HINT_UNSUPPORTED_MESSAGE: Final = (
    "libvirt offers no reclaim-cache-first device property; give the domain a guest-agent "
    "channel (<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/>"
    "</channel>) and run qemu-ga in the guest with guest-exec allowed"
)


def address_of(uri: str, domain: str) -> str:
    """How a libvirt domain is named where a QMP socket path would be: ``URI#DOMAIN``."""
    return f"{uri}#{domain}"


class LibvirtRun:
    """One run of the domain as the client last reached it: ``instance`` is
    ``libvirt:UUID:ID`` (the id changes at every start), ``live`` whether the client still
    holds the domain; the guest agent's last answer to the cache-first probe
    (``qga_checked``, ``qga_error``) and whether the domain's XML has a guest-agent channel
    (``qga_channel``) belong to the run."""

    def __init__(self, instance: str | None = None) -> None:
        self.instance = instance
        self.live = instance is not None
        self.qga_checked: float | None = None
        self.qga_error: AgentExecBlocked | None = None
        self.qga_channel = False

    def known_instance_id(self) -> str | None:
        """The run's identity without I/O; None once the domain was let go."""
        return self.instance if self.live else None


class LibvirtClient:
    """One libvirt domain's balloon. Connects lazily (a connection per URI is shared by
    every client in the process); after the domain stopped or libvirtd went away, the call
    that noticed raises and the next one looks the domain up again.

    The arguments are ``BalloonClient``'s, with ``uri`` and ``domain`` in place of the QMP
    address; ``qga`` and ``facts`` are accepted and ignored (the guest agent is reached
    through libvirt when the domain has its channel).
    """

    def __init__(self, uri: str, domain: str, *, name: str | None = None,
                 qga: str | None = None, connect_timeout: float = 3.0,
                 command_timeout: float = 10.0, store: Store | None = None,
                 minimum: int | None = None, maximum: int | None = None,
                 trace: Trace | None = None, hint: bool | None = None,
                 hint_mount_cgroup: bool = False,
                 target_stale_after: float = TARGET_STALE_AFTER, facts: object = None,
                 recorder: Callable[[TargetChange], None] | None = None) -> None:
        del qga, facts
        self.recorder = recorder
        self.uri = uri
        self.domain = domain
        self.address = address_of(uri, domain)
        self.name = name or domain
        self.vm: str | None = self.name
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.store: Store = store if store is not None else MemoryStore()
        self.minimum = minimum
        self.maximum = maximum
        self.trace = trace
        self.hint_mount_cgroup = hint_mount_cgroup
        self.run = LibvirtRun()
        self._conn: Any = None
        self._dom: Any = None
        self._xml: DomainXml | None = None
        self.streams: set[asyncio.Queue[object]] = set()  # open events(): close() ends them
        self.targets = RememberedTargets(self, self.store, hint=hint,
                                         stale_after=target_stale_after)
        self.cache_first = CacheFirst(self, self.targets, vm=self.vm,
                                      unsupported=HINT_UNSUPPORTED_MESSAGE)

    @classmethod
    def from_ref(cls, ref: VmRef, **kw: Any) -> LibvirtClient:
        """A client for an inventory entry of backend ``libvirt``."""
        uri = ref.uri or binding.DEFAULT_URI
        prefix = f"{uri}#"  # the inventory's address; the name may be qualified (web1@hv2-system)
        domain = ref.qmp[len(prefix):] if ref.qmp.startswith(prefix) else ref.name
        return cls(uri, domain, **{**ref_settings(ref), **kw})

    def __repr__(self) -> str:
        return f"<LibvirtClient {self.name} {self.address}>"

    # ---- connection -------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._dom is not None

    async def __aenter__(self) -> LibvirtClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _open(self) -> tuple[Any, Any, str]:
        conn = binding.open_connection(self.uri, vm=self.vm)
        dom = conn.lookupByName(self.domain)
        if not dom.isActive():
            raise DomainNotRunning(f"domain {self.domain!r} is not running at {self.uri}",
                                   vm=self.vm)
        return conn, dom, f"libvirt:{dom.UUIDString()}:{dom.ID()}"

    async def connect(self) -> None:
        """Open (or share) the URI's connection and find the running domain.

        Raises:
            LibvirtUnavailable: libvirtd is not running there (or the URI cannot be opened).
            LibvirtDenied: libvirtd refuses this user.
            DomainNotRunning: no such domain, or it is not running.
            BackendMissing: libvirt-python is not installed.
        """
        if self._dom is not None:
            return
        conn, dom, instance = await binding.call(
            self._open, op="lookupByName", uri=self.uri, domain=self.domain, vm=self.vm,
            timeout=self.connect_timeout)
        if instance != self.run.instance:  # another run: forget what the last one taught
            self.run, self._xml = LibvirtRun(instance), None
        self.run.live = True
        self._conn, self._dom = conn, dom

    def let_go(self) -> None:
        """The domain stopped, or libvirtd went away: the next call looks it up again."""
        self._dom = None
        self.run.live = False

    async def close(self) -> None:
        """Forget the domain and end open event streams (the shared connection stays)."""
        self.let_go()
        for queue in list(self.streams):
            queue.put_nowait(CLOSED)

    @property
    def connection(self) -> Any:
        """The URI's ``virConnect`` (after ``connect``)."""
        return self._conn

    def domain_object(self) -> Any:
        """The ``virDomain`` (after ``connect``)."""
        if self._dom is None:
            raise Disconnected(f"not connected to {self.address}", vm=self.vm)
        return self._dom

    async def blocking(self, fn: Callable[[], T], *, op: str,
                       timeout: float | None = None) -> T:  # noqa: ASYNC109
        """Run one blocking libvirt call off the event loop (see ``binding.call``); a
        stopped domain or a lost daemon makes the next call look the domain up again.

        Raises:
            DomainNotRunning, LibvirtUnavailable, LibvirtDenied, QMPTimeout,
            QMPCommandError, AgentError (from ``parse.translate``).
        """
        if self.trace is not None:
            self.trace(self.name, "->", {"libvirt": op})
        try:
            result = await binding.call(fn, op=op, uri=self.uri, domain=self.domain,
                                        vm=self.vm, timeout=timeout or self.command_timeout)
        except (Disconnected, ConnectFailed):
            self.let_go()
            raise
        if self.trace is not None:
            self.trace(self.name, "<-", {"libvirt": op, "result": result})
        return result

    async def _call(self, op: str, *args: Any) -> Any:
        await self.connect()
        method = getattr(self.domain_object(), op)
        return await self.blocking(lambda: method(*args), op=op)

    # ---- reads ------------------------------------------------------------------------

    async def domain_xml(self, *, fresh: bool = True) -> DomainXml:
        """The running domain's XML, parsed; ``fresh=False`` reuses this run's last read.

        Raises:
            QMPCommandError: libvirt's XML has the wrong shape; and what ``blocking`` raises.
        """
        if self._xml is None or fresh:
            self._xml = parse_domain_xml(await self._call("XMLDesc", 0), vm=self.vm)
            self.run.qga_channel = self._xml.qga_channel
        return self._xml

    async def _balloon_xml(self, *, fresh: bool = False) -> DomainXml:
        xml = await self.domain_xml(fresh=fresh)
        if not xml.has_balloon:
            raise NoBalloonDevice(NO_BALLOON_MESSAGE, vm=self.vm, error_class="NoBalloon")
        return xml

    async def _memory_stats(self) -> tuple[int, GuestStats]:
        await self._balloon_xml()
        return parse_memory_stats(await self._call("memoryStats"), vm=self.vm)

    async def query_actual(self) -> int:
        """The balloon's ``actual`` (bytes). Raises: NoBalloonDevice; and what
        ``blocking`` raises."""
        return (await self._memory_stats())[0]

    async def stats(self) -> GuestStats:
        """The guest's memory stats. Raises: NoBalloonDevice; and what ``blocking``
        raises."""
        return (await self._memory_stats())[1]

    async def guest_ram(self) -> int:
        """The domain's maximum memory (``<memory>``), in bytes."""
        return (await self.domain_xml(fresh=False)).max_memory

    async def features(self) -> DeviceFeatures:
        """``<memballoon autodeflate=... freePageReporting=...>``; libvirt has no knob for
        free-page-hint (None). Raises: NoBalloonDevice; and what ``blocking`` raises."""
        xml = await self._balloon_xml()
        return DeviceFeatures(deflate_on_oom=xml.autodeflate,
                              free_page_reporting=xml.free_page_reporting)

    async def polling_interval(self) -> int:
        """The stats period of the live domain (0: off). Raises: NoBalloonDevice."""
        return (await self._balloon_xml(fresh=True)).stats_period

    async def enable_stats(self, interval: int) -> None:
        """``virDomainSetMemoryStatsPeriod`` on the live domain (0 turns polling off).

        Raises:
            QMPCommandError: libvirt refused the period (e.g. negative).
            NoBalloonDevice, and what ``blocking`` raises.
        """
        await self._balloon_xml()
        libvirt = binding.load()
        await self._call("setMemoryStatsPeriod", int(interval),
                         libvirt.VIR_DOMAIN_AFFECT_LIVE)
        self._xml = None

    def run_facts(self) -> None:
        """Nothing to hand on between connections: libvirt keeps the domain's facts."""
        return None

    async def instance_id(self) -> str | None:
        """``libvirt:UUID:ID`` of the domain's current run (the id changes at every start).

        Raises: what ``connect`` raises."""
        await self.connect()
        return self.run.instance

    # ---- what CacheFirst needs (the guest agent through libvirt; no QOM) ---------------

    @property
    def qga(self) -> str | None:
        """Where the guest agent is: through libvirt when the domain's XML (as last read
        on this run; every hint and target call reads it first) has its channel."""
        return f"{self.address} (libvirt)" if self.run.qga_channel else None

    def qga_client(self, *, timeout: float) -> LibvirtQga:
        """The domain's guest agent through libvirt, each reply awaited at most ``timeout``."""
        return LibvirtQga(self, timeout=timeout)

    async def device_properties(self) -> dict[str, str]:
        """The balloon device's QOM properties as far as libvirt shows them: none (only a
        QMP pass-through could read them, and it taints the domain), so the cache-first
        hint is never in device mode here. Raises: NoBalloonDevice."""
        await self._balloon_xml()
        return {}

    async def device_path(self) -> str:
        """Raises: NoBalloonDevice: libvirt shows no QOM path (see ``device_properties``)."""
        raise NoBalloonDevice("libvirt shows no QOM path for the balloon device", vm=self.vm,
                              error_class="NoQom")

    async def execute(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        """Raises: QMPCommandError: libvirt holds the QMP monitor; nothing passes through."""
        sent: dict[str, Any] = {"execute": cmd, **({"arguments": args} if args else {})}
        raise QMPCommandError(f"libvirt holds the QMP monitor of {self.address}: {cmd} is "
                              "not passed through", vm=self.vm, error_class="LibvirtOnly",
                              sent=sent)

    async def query(self, cmd: str, args: dict[str, Any] | None,
                    parse: Callable[[Any], T]) -> T:
        """As ``BalloonClient.query``; nothing passes through libvirt's QMP monitor.
        Raises: QMPCommandError (see ``execute``)."""
        return parse(await self.execute(cmd, args))

    # ---- targets ----------------------------------------------------------------------

    def last_target(self) -> int | None:
        """The last target balloonctl set on this run (no I/O); see
        ``RememberedTargets.last_target``."""
        return self.targets.last_target()

    async def current_target(self, *, actual: int | None = None,
                             guest_ram: int | None = None) -> int | None:
        """The target balloonctl set on this run while it stands; see
        ``RememberedTargets.current_target`` (e.g. forgotten after ``virsh setmem`` by
        someone else). Raises: NoBalloonDevice, and what ``blocking`` raises."""
        return await self.targets.current_target(actual=actual, guest_ram=guest_ram)

    def floor(self, guest_ram: int) -> int:
        return default_floor(guest_ram) if self.minimum is None else self.minimum

    async def resolve_target(self, spec: TargetSpec | int, *, force: bool = False) -> int:
        """As ``BalloonClient.resolve_target``; the result is rounded up to whole KiB
        (libvirt's unit), which never crosses guest RAM (a whole number of KiB).

        Raises:
            SizeError, UnsafeTarget, NoBalloonDevice, and what ``blocking`` raises.
        """
        return await self.targets.resolve(spec, minimum=self.minimum, maximum=self.maximum,
                                          force=force, granule=KiB)

    async def set_target(self, spec: TargetSpec | int, *, force: bool = False,
                         dry_run: bool = False, record: bool = True) -> int:
        """Resolve, validate and set the live balloon target (``virDomainSetMemoryFlags``
        with ``VIR_DOMAIN_AFFECT_LIVE``); with the agent-mode hint on, an inflation has the
        guest reclaim clean page cache alongside (``CacheFirst.reclaiming``). Returns the
        target in bytes.

        The target sent goes to ``recorder`` (the journal) unless ``record`` is False, as
        with ``BalloonClient.set_target``.

        Raises:
            SizeError, UnsafeTarget (nothing was sent), NoBalloonDevice, and what
            ``blocking`` raises; what ``recorder`` raises (the target was sent).
        """
        async def send(target: int) -> None:
            live = binding.load().VIR_DOMAIN_AFFECT_LIVE
            await self._call("setMemoryFlags", target // KiB, live)

        return await converge.send_target(self, spec, force=force, dry_run=dry_run,
                                          record=record, send=send)

    async def wait_for_target(self, target: int, *,
                              timeout: float = 60.0,  # noqa: ASYNC109 - the contract's API
                              stall_timeout: float = 5.0,
                              progress: Callable[[int, int], None] | None = None) -> int:
        """As ``BalloonClient.wait_for_target`` (``converge.wait_for_target``), polling
        ``virDomainMemoryStats``.

        Raises: DriverNotReady, StuckBalloon, WaitTimeout, and what ``blocking`` raises.
        """
        return await converge.wait_for_target(self, target, vm=self.vm, timeout=timeout,
                                              stall_timeout=stall_timeout, progress=progress)

    # ---- cache-first hint (agent mode through libvirt; see balloonctl.cachefirst) -------

    async def hint_status(self) -> HintState:
        """How the cache-first hint is honoured (agent or unsupported; no device mode
        through libvirt); see ``CacheFirst.status``.
        Raises: NoBalloonDevice, and what ``blocking`` raises."""
        return await self.cache_first.status()

    async def set_hint(self, on: bool) -> HintState:
        """Turn the agent-mode hint on or off (recorded for this run of the domain); see
        ``CacheFirst.set``.

        Raises:
            HintUnsupported: ``on`` and no guest agent that can run the reclaim.
            AgentExecBlocked: the guest agent refuses guest-exec.
            NoBalloonDevice, and what ``blocking`` raises.
        """
        return await self.cache_first.set(on)

    # ---- snapshot and events ----------------------------------------------------------

    async def snapshot(self, previous: BalloonState | None = None) -> BalloonState:
        """Everything about the domain's balloon in one ``BalloonState``; never raises
        ``BalloonError`` (failures become fields, as with ``BalloonClient``). ``previous``
        helps tell another writer's move (``virsh setmem``), as with ``BalloonClient``."""

        async def fill(found: dict[str, Any]) -> None:
            xml = await self.domain_xml(fresh=True)
            ram = xml.max_memory
            found.update(reachable=True, guest_ram=ram, floor=self.floor(ram),
                         maximum=self.maximum, target=self.last_target())
            actual, found["stats"] = await self._memory_stats()
            found["actual"] = actual
            features = found["features"] = await self.features()
            seen = None
            if previous is not None and previous.actual is not None:
                seen = (previous.actual, previous.taken_at)
            found["target"], found["owner"] = await self.targets.observe(
                actual=actual, guest_ram=ram, seen=seen,
                deflate_on_oom=features.deflate_on_oom)
            found["polling_interval"] = xml.stats_period
            found["hint"] = await self.hint_status()

        return await take_snapshot(self, fill)

    def events(self) -> AsyncIterator[BalloonEvent]:
        """The domain's events as ``BalloonEvent`` (``balloonctl.libvirt.events``):
        ``BALLOON_CHANGE`` (``actual`` in bytes, as QEMU's) and lifecycle changes as
        ``DOMAIN_<EVENT>``. Notifications only; at most ``EVENT_BUFFER`` unread events
        are kept. Ends quietly on ``close()``.

        Raises:
            DomainNotRunning: the domain stopped (after its DOMAIN_STOPPED event).
            LibvirtUnavailable: the connection to libvirtd closed.
            and what ``connect`` raises.
        """
        return domain_events(self)
