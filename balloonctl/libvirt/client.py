"""LibvirtClient: one libvirt domain's balloon, with the public interface of
``balloonctl.qmp.BalloonClient`` and the same ``BalloonState``.

libvirt holds each domain's QMP socket for the domain's lifetime, so the way in is its API:
``virDomainSetMemoryFlags`` (live; KiB) for the target, which also keeps the domain's live
``<currentMemory>`` right; ``virDomainMemoryStats`` for ``actual`` and the guest's stats;
``virDomainSetMemoryStatsPeriod`` for polling; the domain XML for guest RAM (``<memory>``)
and the device's features; ``virDomainQemuAgentCommand`` for the guest agent (the
cache-first hint in agent mode); domain events for ``events()``.

What balloonctl remembers (the last target, the agent-mode hint) is kept in the same store,
keyed by ``URI#DOMAIN`` and tied to one run of the domain (its UUID and its id, which
libvirt gives anew at every start), under the same rules as ``BalloonClient``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final, TypeVar

from balloonctl.cachefirst import QGA_RECHECK
from balloonctl.errors import (
    AgentError,
    AgentExecBlocked,
    BalloonError,
    ConnectFailed,
    Disconnected,
    DomainNotRunning,
    DriverNotReady,
    HintUnsupported,
    LibvirtUnavailable,
    NoBalloonDevice,
    QMPTimeout,
    StuckBalloon,
    WaitTimeout,
)
from balloonctl.libvirt import binding
from balloonctl.libvirt.parse import (
    NO_BALLOON_MESSAGE,
    DomainXml,
    parse_domain_xml,
    parse_memory_stats,
)
from balloonctl.model import (
    CONVERGED_TOLERANCE,
    BalloonState,
    DeviceFeatures,
    GuestStats,
    HintMode,
    HintState,
    VmRef,
    default_floor,
    validate_target,
)
from balloonctl.qga import QgaClient
from balloonctl.qmp import POLL_INTERVAL, TARGET_STALE_AFTER
from balloonctl.qmpsession import EVENT_BUFFER, BalloonEvent, Trace
from balloonctl.store import MemoryStore, Store
from balloonctl.units import KiB, TargetSpec, format_size

__all__ = ["HINT_UNSUPPORTED_MESSAGE", "LibvirtClient", "LibvirtQga", "address_of"]

log = logging.getLogger(__name__)
T = TypeVar("T")

HINT_UNSUPPORTED_MESSAGE: Final = (
    "libvirt offers no reclaim-cache-first device property; give the domain a guest-agent "
    "channel (<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/>"
    "</channel>) and run qemu-ga in the guest with guest-exec allowed"
)
_TARGET_KEYS: Final = ("target", "target_at", "target_reached")
STATS_REFRESH_WAIT: Final = 3.0
STATS_POLL_INTERVAL: Final = 0.3
# virDomainEventType, and virDomainEventStoppedDetailType for STOPPED.
_LIFECYCLE: Final = ("DEFINED", "UNDEFINED", "STARTED", "SUSPENDED", "RESUMED", "STOPPED",
                     "SHUTDOWN", "PMSUSPENDED", "CRASHED")
_STOPPED: Final = ("shutdown", "destroyed", "crashed", "migrated", "saved", "failed",
                   "from-snapshot")
_ENDS_RUN: Final = frozenset({"UNDEFINED", "STOPPED"})
_CLOSED: Final = object()  # close() ended the stream
_LOST: Final = object()  # the connection to libvirtd closed


def address_of(uri: str, domain: str) -> str:
    """How a libvirt domain is named where a QMP socket path would be: ``URI#DOMAIN``."""
    return f"{uri}#{domain}"


class LibvirtQga(QgaClient):
    """The guest agent of a libvirt domain, reached through ``virDomainQemuAgentCommand``
    (libvirt owns the channel's socket and does the ``guest-sync`` itself). Everything
    above ``execute`` (``require_exec``, ``exec``, ``drop_caches``) is ``QgaClient``'s.
    """

    def __init__(self, client: LibvirtClient, *, timeout: float) -> None:
        super().__init__(f"{client.address} (libvirt)", timeout=timeout, trace=client.trace,
                         name=f"{client.name}/qga", vm=client.vm)
        self.client = client

    @property
    def connected(self) -> bool:
        return True

    async def connect(self) -> None:
        await self.client.connect()

    async def close(self) -> None:
        return None

    async def sync(self) -> None:
        return None

    async def execute(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        """Raises: AgentError (AgentExecBlocked for a refused guest-exec)."""
        msg: dict[str, Any] = {"execute": cmd}
        if args is not None:
            msg["arguments"] = args
        if self.trace is not None:
            self.trace(self.name, "->", msg)
        qemu = binding.qemu_module()
        await self.client.connect()
        dom = self.client.domain_object()
        wait = max(1, math.ceil(self.timeout))
        try:
            text = await self.client.blocking(
                lambda: qemu.qemuAgentCommand(dom, json.dumps(msg), wait, 0),
                op="qemuAgentCommand", timeout=self.timeout + 1)
        except (DomainNotRunning, LibvirtUnavailable):
            raise
        except BalloonError as exc:
            text = exc.message.lower()
            if cmd.startswith("guest-exec") and ("disabled" in text or "not found" in text):
                raise AgentExecBlocked(
                    f"the guest agent refuses {cmd} ({exc.message}): allow it in the guest's "
                    "qemu-ga configuration", vm=self.vm) from None
            if isinstance(exc, AgentError):
                raise
            raise AgentError(f"guest agent {cmd} failed: {exc.message}", vm=self.vm) from None
        try:
            reply = json.loads(text)
        except (TypeError, ValueError):
            raise AgentError(f"guest agent sent a bad reply to {cmd}: {text!r}",
                             vm=self.vm) from None
        if self.trace is not None:
            self.trace(self.name, "<-", reply)
        if not isinstance(reply, dict) or "return" not in reply:
            raise AgentError(f"guest agent sent a bad reply to {cmd}: {text!r}", vm=self.vm)
        return reply["return"]


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
                 target_stale_after: float = TARGET_STALE_AFTER, facts: object = None) -> None:
        del qga, facts
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
        self.hint_preference = hint
        self.target_stale_after = target_stale_after
        self._conn: Any = None
        self._dom: Any = None
        self._instance: str | None = None  # "libvirt:UUID:ID" of the run reached
        self._xml: DomainXml | None = None
        self._qga_checked: float | None = None
        self._qga_error: AgentExecBlocked | None = None
        self._streams: set[asyncio.Queue[object]] = set()

    @classmethod
    def from_ref(cls, ref: VmRef, **kw: Any) -> LibvirtClient:
        """A client for an inventory entry of backend ``libvirt``."""
        kw.setdefault("name", ref.name)
        kw.setdefault("minimum", ref.minimum)
        kw.setdefault("maximum", ref.maximum)
        kw.setdefault("hint", ref.hint)
        return cls(ref.uri or binding.DEFAULT_URI, ref.name, **kw)

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
        if instance != self._instance:  # another run: forget what the last one taught
            self._xml, self._qga_checked, self._qga_error = None, None, None
        self._conn, self._dom, self._instance = conn, dom, instance

    async def close(self) -> None:
        """Forget the domain and end open event streams (the shared connection stays)."""
        self._dom = None
        for queue in list(self._streams):
            queue.put_nowait(_CLOSED)

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
            self._dom = None
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

    # ---- what the store remembers about this run ---------------------------------------

    async def instance_id(self) -> str | None:
        """``libvirt:UUID:ID`` of the domain's current run (the id changes at every start).

        Raises: what ``connect`` raises."""
        await self.connect()
        return self._instance

    def _entry(self, instance: str | None) -> dict[str, Any]:
        if instance is None:
            return {}
        entry = self.store.get(self.address)
        return entry if entry.get("instance") == instance else {}

    async def _remembered(self) -> dict[str, Any]:
        return self._entry(await self.instance_id())

    async def _remember(self, **values: Any) -> None:
        instance = await self.instance_id()

        def change(entry: dict[str, Any]) -> dict[str, Any]:
            if instance is None or entry.get("instance") != instance:
                entry = {"instance": instance}
            return {**entry, **values}

        self.store.edit(self.address, change)

    def _edit_quietly(self, change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        try:
            self.store.edit(self.address, change)
        except OSError as exc:
            log.warning("%s: cannot update balloonctl's state: %s", self.name, exc)

    def _hint_on(self, entry: Mapping[str, Any]) -> bool:
        return bool(entry.get("hint", self.hint_preference is True))

    def last_target(self) -> int | None:
        """The last target balloonctl set on this run (no I/O; see ``BalloonClient``)."""
        value = self._entry(self._instance if self.connected else None).get("target")
        return value if isinstance(value, int) else None

    async def current_target(self, *, actual: int | None = None,
                             guest_ram: int | None = None) -> int | None:
        """The target balloonctl set on this run while it stands (``BalloonClient``'s
        rule: forgotten once ``actual`` left it after reaching it, e.g. ``virsh setmem``
        by someone else, or when it was not reached ``target_stale_after`` s after it was set).

        Raises: NoBalloonDevice, and what ``blocking`` raises."""
        instance = await self.instance_id()
        entry = self._entry(instance)
        target = entry.get("target")
        if not isinstance(target, int):
            return None
        ram = guest_ram if guest_ram is not None else await self.guest_ram()
        if actual is None:
            actual = await self.query_actual()
        if target > ram:
            return None
        set_at = entry.get("target_at")

        def same(e: dict[str, Any]) -> bool:
            return (e.get("instance") == instance and e.get("target") == target
                    and e.get("target_at") == set_at)

        if abs(actual - target) <= CONVERGED_TOLERANCE:
            if not entry.get("target_reached"):
                self._edit_quietly(lambda e: {**e, "target_reached": True} if same(e) else e)
            return target
        too_old = (not isinstance(set_at, int | float)
                   or time.time() - set_at > self.target_stale_after)
        if entry.get("target_reached") or too_old:
            log.info("%s: forgetting stale target %s (actual %s)", self.name,
                     format_size(target), format_size(actual))
            self._edit_quietly(lambda e: {k: v for k, v in e.items() if k not in _TARGET_KEYS}
                               if same(e) else e)
            return None
        return target

    def floor(self, guest_ram: int) -> int:
        return default_floor(guest_ram) if self.minimum is None else self.minimum

    # ---- targets ----------------------------------------------------------------------

    async def resolve_target(self, spec: TargetSpec | int, *, force: bool = False) -> int:
        """As ``BalloonClient.resolve_target``; the result is rounded up to whole KiB
        (libvirt's unit), which never crosses guest RAM (a whole number of KiB).

        Raises:
            SizeError, UnsafeTarget, NoBalloonDevice, and what ``blocking`` raises.
        """
        ram = await self.guest_ram()
        if isinstance(spec, int):
            target = spec
        else:
            actual = await self.query_actual()
            current = await self.current_target(actual=actual, guest_ram=ram)
            target = spec.resolve(guest_ram=ram, current=actual if current is None else current)
        target = -(-target // KiB) * KiB
        return validate_target(target, guest_ram=ram, minimum=self.minimum,
                               maximum=self.maximum, force=force, vm=self.vm)

    async def set_target(self, spec: TargetSpec | int, *, force: bool = False,
                         dry_run: bool = False) -> int:
        """Resolve, validate and set the live balloon target (``virDomainSetMemoryFlags``
        with ``VIR_DOMAIN_AFFECT_LIVE``); with the agent-mode hint on, an inflation first
        has the guest drop clean page cache. Returns the target in bytes.

        Raises:
            SizeError, UnsafeTarget (nothing was sent), NoBalloonDevice, and what
            ``blocking`` raises.
        """
        target = await self.resolve_target(spec, force=force)
        if dry_run:
            return target
        actual = await self.query_actual()
        if target < actual and self._hint_on(await self._remembered()):
            if (await self.hint_status()).mode is HintMode.AGENT:
                await self._drop_cache_before_inflating()
        libvirt = binding.load()
        await self._call("setMemoryFlags", target // KiB, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        await self._remember(target=target, target_at=time.time(), target_reached=False)
        return target

    async def wait_for_target(self, target: int, *,
                              timeout: float = 60.0,  # noqa: ASYNC109 - the contract's API
                              stall_timeout: float = 5.0,
                              progress: Callable[[int, int], None] | None = None) -> int:
        """As ``BalloonClient.wait_for_target``, polling ``virDomainMemoryStats``.

        Raises: DriverNotReady, StuckBalloon, WaitTimeout, and what ``blocking`` raises.
        """
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + timeout
        first: int | None = None
        last: int | None = None
        last_move = start
        while True:
            actual, stats = await self._memory_stats()
            now = loop.time()
            if progress is not None:
                progress(actual, target)
            if abs(actual - target) <= CONVERGED_TOLERANCE:
                await self.current_target(actual=actual)
                return actual
            first = actual if first is None else first
            if actual != last:
                last, last_move = actual, now
            stalled = now - last_move >= stall_timeout
            if stalled or now >= deadline:
                if not stats.reported and actual == first:
                    raise DriverNotReady(
                        "the guest has not loaded the virtio_balloon driver (no stats ever "
                        f"reported) and actual stays at {format_size(actual)}", vm=self.vm)
                left = format_size(abs(actual - target))
                if stalled:
                    raise StuckBalloon(
                        f"balloon stuck at {format_size(actual)}, {left} short of the target "
                        f"{format_size(target)}: no movement for {stall_timeout:g}s",
                        vm=self.vm, actual=actual, target=target)
                raise WaitTimeout(
                    f"balloon did not reach {format_size(target)} within {timeout:g}s "
                    f"(actual {format_size(actual)}, {left} to go)",
                    vm=self.vm, actual=actual, target=target)
            await asyncio.sleep(min(POLL_INTERVAL, max(0.0, deadline - now)))

    # ---- cache-first hint (agent mode through libvirt) ---------------------------------

    def qga_client(self, *, probe: bool = False) -> LibvirtQga:
        """The domain's guest agent through libvirt (a probe answers within 2 s)."""
        timeout = min(self.command_timeout, 5.0)
        if probe:
            timeout = min(timeout, self.connect_timeout, 2.0)
        return LibvirtQga(self, timeout=timeout)

    async def _qga_refusal(self, *, fresh: bool) -> AgentError | None:
        now = time.monotonic()
        if (not fresh and self._qga_checked is not None
                and now - self._qga_checked < QGA_RECHECK):
            return self._qga_error
        self._qga_checked = None
        try:
            await self.qga_client(probe=True).require_exec()
        except AgentExecBlocked as exc:
            self._qga_checked, self._qga_error = now, exc
            return exc
        except AgentError as exc:
            return exc
        self._qga_checked, self._qga_error = now, None
        return None

    async def _probe_hint(self, *, fresh: bool = False) -> tuple[HintState, AgentError | None]:
        xml = await self._balloon_xml()
        if not xml.qga_channel:
            return HintState(HintMode.UNSUPPORTED, False, HINT_UNSUPPORTED_MESSAGE), None
        remembered = await self._remembered()
        refusal = await self._qga_refusal(fresh=fresh)
        if refusal is not None:
            why = "guest-exec is blocked" if isinstance(refusal, AgentExecBlocked) else (
                "the guest agent is unreachable")
            detail = f"{why} ({refusal.message}); {HINT_UNSUPPORTED_MESSAGE}"
            if self._hint_on(remembered):
                detail = f"the hint is on in balloonctl's state but not honoured: {detail}"
            return HintState(HintMode.UNSUPPORTED, False, detail), refusal
        released = remembered.get("hint_released")
        detail = "guest agent (through libvirt) drops clean page cache before each inflation"
        if remembered.get("hint_error"):
            detail += f"; last drop failed: {remembered['hint_error']}"
        elif isinstance(released, int):
            detail += f"; last drop released {format_size(released)}"
        return HintState(HintMode.AGENT, self._hint_on(remembered), detail,
                         released if isinstance(released, int) else None), None

    async def hint_status(self) -> HintState:
        """How the cache-first hint is honoured (agent or unsupported; no device mode
        through libvirt). Raises: NoBalloonDevice, and what ``blocking`` raises."""
        return (await self._probe_hint())[0]

    async def set_hint(self, on: bool) -> HintState:
        """Turn the agent-mode hint on or off (recorded for this run of the domain).

        Raises:
            HintUnsupported: ``on`` and no guest agent that can run the drop.
            AgentExecBlocked: the guest agent refuses guest-exec.
            NoBalloonDevice, and what ``blocking`` raises.
        """
        state, refusal = await self._probe_hint(fresh=True)
        if state.mode is HintMode.UNSUPPORTED:
            if on:
                if isinstance(refusal, AgentExecBlocked):
                    raise refusal
                raise HintUnsupported(f"cannot honour the cache-first hint: {state.detail}",
                                      vm=self.vm)
            await self._remember(hint=False)
            return state
        await self._remember(hint=bool(on))
        return await self.hint_status()

    async def _next_sample(self, previous: GuestStats, wait: float) -> GuestStats | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while (left := deadline - loop.time()) > 0:
            await asyncio.sleep(min(STATS_POLL_INTERVAL, left))
            stats = await self.stats()
            if stats.last_update != previous.last_update:
                return stats
        return None

    async def _drop_cache_before_inflating(self) -> None:
        """Have the guest drop clean page cache and measure the release from
        ``disk_caches`` in the samples before and after (as ``BalloonClient`` does)."""
        interval = await self.polling_interval()
        before = await self.stats()
        tuned = interval == 0 or interval > 2
        if tuned:
            await self.enable_stats(1)
        try:
            before = await self._next_sample(before, STATS_REFRESH_WAIT) or before
            try:
                await self.qga_client().drop_caches()
            except AgentError as exc:
                log.warning("%s: cache-first drop failed: %s", self.name, exc)
                self._qga_checked = None
                await self._remember(hint_error=exc.message, hint_released=None,
                                     hint_at=time.time())
                return
            after = await self._next_sample(await self.stats(), STATS_REFRESH_WAIT)
        finally:
            if tuned:
                await self.enable_stats(interval)
        released: int | None = None
        if after is not None and before.disk_caches is not None and after.disk_caches is not None:
            released = max(0, before.disk_caches - after.disk_caches)
        await self._remember(hint_released=released, hint_error=None, hint_at=time.time())

    # ---- snapshot and events ----------------------------------------------------------

    async def snapshot(self) -> BalloonState:
        """Everything about the domain's balloon in one ``BalloonState``; never raises
        ``BalloonError`` (failures become fields, as with ``BalloonClient``)."""
        found: dict[str, Any] = {"name": self.name, "qmp": self.address,
                                 "target": self.last_target()}
        try:
            await self.connect()
        except BalloonError as exc:
            return _failed(found, exc, reachable=False)
        try:
            xml = await self.domain_xml(fresh=True)
            ram = xml.max_memory
            found.update(reachable=True, guest_ram=ram, floor=self.floor(ram),
                         maximum=self.maximum, target=self.last_target())
            actual, found["stats"] = await self._memory_stats()
            found["actual"] = actual
            found["target"] = await self.current_target(actual=actual, guest_ram=ram)
            found["polling_interval"] = xml.stats_period
            found["features"] = await self.features()
            found["hint"] = await self.hint_status()
        except NoBalloonDevice as exc:
            return _failed(found, exc, reachable=True, has_device=False)
        except (ConnectFailed, Disconnected, QMPTimeout) as exc:
            return _failed(found, exc, reachable=False)
        except BalloonError as exc:
            return _failed(found, exc, reachable=True)
        return BalloonState(**found, taken_at=time.time())

    async def events(self) -> AsyncIterator[BalloonEvent]:
        """The domain's events as ``BalloonEvent``: ``BALLOON_CHANGE`` (``actual`` in
        bytes, as QEMU's) and lifecycle changes as ``DOMAIN_<EVENT>`` (``detail`` says
        more, e.g. ``DOMAIN_STOPPED`` ``destroyed``). Notifications only. At most
        ``EVENT_BUFFER`` unread events are kept (oldest dropped). Ends quietly on ``close()``.

        Raises:
            DomainNotRunning: the domain stopped (after its DOMAIN_STOPPED event).
            LibvirtUnavailable: the connection to libvirtd closed.
            and what ``connect`` raises.
        """
        await self.connect()
        libvirt = binding.load()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        conn, dom = self._conn, self._dom

        def put(item: object) -> None:
            while queue.qsize() >= EVENT_BUFFER:
                queue.get_nowait()
            queue.put_nowait(item)

        def deliver(item: object) -> None:  # libvirt's event thread
            try:
                loop.call_soon_threadsafe(put, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass

        def on_balloon(_c: Any, _d: Any, actual_kib: int, _o: object) -> None:
            deliver(BalloonEvent("BALLOON_CHANGE", {"actual": int(actual_kib) * KiB},
                                 time.time()))

        def on_lifecycle(_c: Any, _d: Any, event: int, detail: int, _o: object) -> None:
            kind = _LIFECYCLE[event] if 0 <= event < len(_LIFECYCLE) else str(event)
            what: str | int = detail
            if kind == "STOPPED" and 0 <= detail < len(_STOPPED):
                what = _STOPPED[detail]
            deliver(BalloonEvent(f"DOMAIN_{kind}", {"detail": what}, time.time()))

        def register() -> list[int]:
            return [
                conn.domainEventRegisterAny(dom, libvirt.VIR_DOMAIN_EVENT_ID_BALLOON_CHANGE,
                                            on_balloon, None),
                conn.domainEventRegisterAny(dom, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                            on_lifecycle, None),
            ]

        def deregister(ids: list[int]) -> None:
            for callback_id in ids:
                try:
                    conn.domainEventDeregisterAny(callback_id)
                except libvirt.libvirtError:
                    pass  # the connection is gone, and its callbacks with it

        ids = await self.blocking(register, op="domainEventRegisterAny")
        cancel = binding.on_close(conn, lambda: deliver(_LOST))
        self._streams.add(queue)
        try:
            # Never trust events alone: a stop between connect() and registering is missed.
            if not await self.blocking(dom.isActive, op="isActive"):
                raise DomainNotRunning(f"domain {self.domain!r} stopped", vm=self.vm)
            while True:
                item = await queue.get()
                if item is _CLOSED:
                    return
                if item is _LOST:
                    self._dom = None
                    raise LibvirtUnavailable(f"libvirtd closed the connection {self.uri}",
                                             vm=self.vm)
                assert isinstance(item, BalloonEvent)
                yield item
                if item.name.removeprefix("DOMAIN_") in _ENDS_RUN:
                    self._dom = None
                    raise DomainNotRunning(
                        f"domain {self.domain!r} stopped ({item.data.get('detail')})",
                        vm=self.vm)
        finally:
            self._streams.discard(queue)
            cancel()
            await asyncio.shield(asyncio.to_thread(deregister, ids))


def _failed(found: dict[str, Any], exc: BalloonError, *, reachable: bool,
            **more: Any) -> BalloonState:
    return BalloonState(**{**found, **more, "reachable": reachable, "error": exc.message,
                           "error_kind": type(exc).__name__, "taken_at": time.time()})
