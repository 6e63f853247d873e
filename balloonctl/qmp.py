"""BalloonClient: one VM's virtio balloon over QMP, on top of ``qemu.qmp.QMPClient``.

qemu.qmp supplies the transport (framing, ids, concurrent ``execute``). This module adds
what it lacks for balloonctl:

- timeouts on every wait (``connect_timeout`` covers the socket, the greeting and the
  capabilities negotiation; ``command_timeout`` covers each command);
- a clear ``SocketBusy`` when QEMU accepts the connection but never greets, which is what a
  QMP socket does while another client (libvirt, a dashboard, qmp-shell) holds it;
- recovery after the peer drops: the in-flight call raises ``Disconnected`` and the next
  call reconnects;
- one translation of qemu.qmp's errors into ``balloonctl.errors`` (``_translate``);
- bounded event buffers (qemu.qmp's listeners keep every event forever);
- balloon device discovery, guest stats, validated targets, convergence waits, and the
  cache-first hint with an honest account of how (or whether) it is honoured.

Nothing here builds state from events: ``query-balloon`` is the source of truth.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import stat
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from qemu.qmp import (
    ConnectError,
    EventListener,
    ExecInterruptedError,
    ExecuteError,
    Message,
    QMPClient,
    QMPError,
    Runstate,
    StateError,
)

from balloonctl.agent import GuestAgent
from balloonctl.errors import (
    AgentError,
    AgentExecBlocked,
    BalloonError,
    ConnectFailed,
    Disconnected,
    DriverNotReady,
    HintUnsupported,
    NoBalloonDevice,
    QMPCommandError,
    QMPTimeout,
    SocketBusy,
    StuckBalloon,
    WaitTimeout,
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
from balloonctl.store import MemoryStore, Store
from balloonctl.units import TargetSpec, format_size

__all__ = [
    "BALLOON_TYPES",
    "HINT_PROPERTY",
    "BalloonClient",
    "BalloonEvent",
    "BoundedEventListener",
    "Trace",
]

log = logging.getLogger(__name__)

Trace = Callable[[str, str, Any], None]
"""``trace(vm, direction, message)``: direction is ``"->"`` (to QEMU) or ``"<-"`` (from it)."""

BALLOON_TYPES: Final = frozenset(
    f"child<{t}>"
    for t in (
        "virtio-balloon-pci",
        "virtio-balloon-pci-transitional",
        "virtio-balloon-pci-non-transitional",
        "virtio-balloon-ccw",
        "virtio-balloon-device",
    )
)
HINT_PROPERTY: Final = "reclaim-cache-first"
NO_DEVICE_MESSAGE: Final = (
    "VM has no virtio-balloon device; start QEMU with -device virtio-balloon-pci,id=balloon0"
)
HINT_UNSUPPORTED_MESSAGE: Final = (
    "stock QEMU has no reclaim-cache-first property; give balloonctl the VM's guest-agent "
    "socket (--qga / qga = ... in config) with guest-exec allowed"
)

# How often wait_for_target polls query-balloon.
POLL_INTERVAL: Final = 0.05
# How long the agent-mode hint waits for the guest to push a fresh stats sample.
STATS_REFRESH_WAIT: Final = 3.0
# Events kept per listener (queue) and in its history; older ones are dropped.
EVENT_BUFFER: Final = 256


@dataclass(frozen=True, slots=True)
class BalloonEvent:
    """A QMP event as balloonctl passes it on. ``timestamp`` is QEMU's, in seconds.

    Events are notifications only: never state. BALLOON_CHANGE is rate-limited by QEMU.
    """

    name: str
    data: Mapping[str, Any] = field(default_factory=dict)
    timestamp: float = 0.0

    @classmethod
    def from_message(cls, msg: Mapping[str, Any]) -> BalloonEvent:
        ts = msg.get("timestamp") or {}
        stamp = float(ts.get("seconds", 0)) + float(ts.get("microseconds", 0)) / 1e6
        data = msg.get("data") or {}
        return cls(str(msg.get("event", "")), dict(data), stamp)


class BoundedEventListener(EventListener):
    """An ``EventListener`` whose queue and history keep at most ``maxlen`` events.

    qemu.qmp's listener appends every event to a list forever and blocks its reader when a
    bounded queue is full; here the oldest event is dropped instead.
    """

    def __init__(self, names: str | list[str] | None = None, *,
                 maxlen: int = EVENT_BUFFER) -> None:
        super().__init__(names)
        self.maxlen = maxlen
        self._history: collections.deque[Message] = collections.deque(  # type: ignore[assignment]
            maxlen=maxlen
        )
        self.dropped = 0

    async def put(self, event: Message) -> None:
        if not self.accept(event):
            return
        self._history.append(event)
        while self._queue.qsize() >= self.maxlen:
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(event)


class _Transport(QMPClient):
    """QMPClient with bounded event buffers and a trace hook on every message."""

    def __init__(self, name: str, trace: Trace | None) -> None:
        super().__init__(name)
        # The default all-events listener keeps everything forever and remove_listener()
        # refuses to remove it: swap it for a bounded one.
        self._listeners.remove(self.events)
        self.events = BoundedEventListener(maxlen=16)
        self._listeners.append(self.events)
        self._trace = trace
        self._vm = name
        # Set whenever the session is not RUNNING; unlike runstate_changed() it cannot be
        # missed by a waiter that starts listening just after the change.
        self.not_running = asyncio.Event()
        self.not_running.set()

    def _set_state(self, state: Runstate) -> None:
        super()._set_state(state)
        if state is Runstate.RUNNING:
            self.not_running.clear()
        else:
            self.not_running.set()

    # Not calling super() in these hooks: it pretty-prints every message even when debug
    # logging is off, which costs more than the rest of a round trip.
    def _cb_outbound(self, msg: Message) -> Message:
        if self._trace is not None:
            self._call_trace("->", msg)
        return msg

    def _cb_inbound(self, msg: Message) -> Message:
        if self._trace is not None:
            self._call_trace("<-", msg)
        return msg

    def _call_trace(self, direction: str, msg: Message) -> None:
        assert self._trace is not None
        try:
            self._trace(self._vm, direction, dict(msg))
        except Exception:  # a broken printer must not kill the connection's reader
            log.exception("%s: trace callback failed", self._vm)


@dataclass(slots=True)
class _Failure:
    """Where a qemu.qmp failure happened, for ``_translate``."""

    address: str
    vm: str | None
    op: str  # "connect" or the QMP command
    args: Mapping[str, Any] | None = None
    timeout: float = 0.0
    accepted: bool = False  # connect: the socket accepted before the timeout
    cause: BaseException | None = None  # what disconnect() re-raised after a drop


def _describe_cause(cause: BaseException | None) -> str:
    if cause is None or isinstance(cause, EOFError):
        return "the peer closed the connection"
    text = str(cause) or type(cause).__name__
    return text.splitlines()[0]


def _translate(exc: Exception, where: _Failure) -> BalloonError | None:
    """Turn a qemu.qmp / OS / asyncio failure into a BalloonError. The only such place.

    Returns None for anything else (a bug in balloonctl, which must not be disguised).
    """
    addr, vm = where.address, where.vm
    if where.op == "connect":
        if isinstance(exc, TimeoutError):
            if where.accepted:
                return SocketBusy(
                    f"QMP socket {addr} accepted the connection but sent no greeting within "
                    f"{where.timeout:g}s: another QMP client (libvirt, a balloonctl dashboard, "
                    "qmp-shell) is holding it", vm=vm)
            return SocketBusy(
                f"QMP socket {addr} did not accept the connection within {where.timeout:g}s: "
                "its listen queue is full (other QMP clients are waiting)", vm=vm)
        root: BaseException = exc.exc if isinstance(exc, ConnectError) else exc
        if isinstance(root, FileNotFoundError):
            why = "no such socket (is the VM running with -qmp unix:PATH,server=on,wait=off?)"
        elif isinstance(root, ConnectionRefusedError):
            why = _refused_why(addr)
        elif isinstance(root, PermissionError):
            why = "permission denied"
        elif isinstance(root, EOFError | AssertionError | ConnectionResetError):
            # qemu.qmp raises a bare AssertionError when the peer answers the negotiation
            # and closes at once.
            why = "the peer closed the connection during the QMP handshake"
        else:
            why = _describe_cause(root)
        return ConnectFailed(f"cannot connect to QMP socket {addr}: {why}", vm=vm)

    cmd = where.op
    if isinstance(exc, ExecuteError):
        sent, received = dict(exc.sent), dict(exc.received)
        if exc.error_class == "DeviceNotActive":
            return NoBalloonDevice(NO_DEVICE_MESSAGE, vm=vm, error_class=exc.error_class,
                                   sent=sent, received=received)
        return QMPCommandError(f"QEMU refused {cmd}: {exc} ({exc.error_class})", vm=vm,
                               error_class=exc.error_class, sent=sent, received=received)
    if isinstance(exc, TimeoutError):
        return QMPTimeout(f"QEMU at {addr} did not answer {cmd} within {where.timeout:g}s", vm=vm)
    if isinstance(exc, ExecInterruptedError | StateError | EOFError | OSError):
        return Disconnected(
            f"QMP connection to {addr} lost during {cmd}: {_describe_cause(where.cause)}", vm=vm)
    if isinstance(exc, QMPError):
        # BadReplyError and friends: QEMU (or whatever is on the socket) sent nonsense.
        return QMPCommandError(f"bad reply to {cmd} from {addr}: {_describe_cause(exc)}", vm=vm,
                               error_class=type(exc).__name__,
                               sent={"execute": cmd, "arguments": dict(where.args or {})})
    return None


def _idle(qmp: QMPClient) -> bool:
    return qmp.runstate is Runstate.IDLE


def _int_field(reply: Any, key: str, cmd: str, vm: str | None) -> int:
    """``reply[key]`` as an int, or a QMPCommandError naming the malformed reply."""
    value = reply.get(key) if isinstance(reply, dict) else None
    if not isinstance(value, int) or isinstance(value, bool):
        raise QMPCommandError(f"unexpected reply to {cmd}: no integer {key!r} in {reply!r}",
                              vm=vm, error_class="BadReply", sent={"execute": cmd},
                              received={"return": reply})
    return value


def _refused_why(address: str) -> str:
    """Why a connect was refused: nothing listens, or the path is no socket at all (unix
    connect() gives ECONNREFUSED for a regular file too: a mistyped --qmp)."""
    try:
        mode: int | None = os.stat(address).st_mode
    except OSError:  # host:port, or the socket vanished meanwhile
        mode = None
    if mode is not None and not stat.S_ISSOCK(mode):
        return "not a socket (give the VM's QMP socket, e.g. from -qmp unix:PATH,server=on)"
    return "connection refused (nothing is listening: the VM has probably exited)"


def _parse_address(address: str) -> str | tuple[str, int]:
    """``host:port`` is TCP; anything else (or anything with a slash) is a unix socket path."""
    if "/" not in address and ":" in address:
        host, _, port = address.rpartition(":")
        if port.isdigit():
            return (host.strip("[]") or "localhost", int(port))
    return address


class BalloonClient:
    """One VM's balloon over QMP. Connects lazily; reconnects on the call after a drop.

    ``address`` is a unix socket path or ``host:port``; ``qga`` the guest-agent socket (used
    by the cache-first hint). ``store`` remembers the last target and the agent-mode hint,
    keyed by ``address``. ``minimum``/``maximum`` bound targets (``default_floor`` when
    ``minimum`` is None). ``trace`` sees every QMP message sent and received.
    """

    def __init__(self, address: str, *, name: str | None = None, qga: str | None = None,
                 connect_timeout: float = 3.0, command_timeout: float = 10.0,
                 store: Store | None = None, minimum: int | None = None,
                 maximum: int | None = None, trace: Trace | None = None) -> None:
        self.address = address
        self.name = name or address
        self._vm = name  # errors name the VM only when it has a name of its own
        self.qga = qga
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.store: Store = store if store is not None else MemoryStore()
        self.minimum = minimum
        self.maximum = maximum
        self.trace = trace
        self._qmp = _Transport(self.name, trace)
        self._lock = asyncio.Lock()
        self._device: str | None = None
        self._device_props: dict[str, str] | None = None
        self._guest_ram: int | None = None
        self._features: DeviceFeatures | None = None
        self._closes = 0  # close() calls so far: an event stream ended by close() is quiet

    @classmethod
    def from_ref(cls, ref: VmRef, **kw: Any) -> BalloonClient:
        """A client for an inventory entry (name, sockets and limits come from ``ref``)."""
        kw.setdefault("name", ref.name)
        kw.setdefault("qga", ref.qga)
        kw.setdefault("minimum", ref.minimum)
        kw.setdefault("maximum", ref.maximum)
        return cls(ref.qmp, **kw)

    def __repr__(self) -> str:
        return f"<BalloonClient {self.name} {self.address} {self._qmp.runstate.name}>"

    # ---- connection -------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._qmp.runstate is Runstate.RUNNING

    async def __aenter__(self) -> BalloonClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect and negotiate, within ``connect_timeout``. No-op when connected.

        Raises:
            ConnectFailed: the socket is missing or refuses, or the handshake failed.
            SocketBusy: the socket accepted but sent no greeting in time (another client).
        """
        if self.connected:
            return
        async with self._lock:
            if self._qmp.runstate is Runstate.DISCONNECTING:
                await self._reap()
            if self.connected:
                return
            await self._connect()

    async def _connect(self) -> None:
        where = _Failure(self.address, self._vm, "connect", timeout=self.connect_timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout
        sock: socket.socket | None = None
        try:
            async with asyncio.timeout_at(deadline):
                sock = await self._open_socket()
                where.accepted = True
                await self._qmp.connect(sock)
        except Exception as exc:
            if self._qmp.runstate is not Runstate.IDLE:
                # e.g. qemu.qmp's bare AssertionError after a peer that negotiated and left
                await self._reap()
            if not _idle(self._qmp):
                self._qmp = _Transport(self.name, self.trace)
            if sock is not None:
                sock.close()  # qemu.qmp closed its stream already; this is a no-op then
            raise _translate(exc, where) or ConnectFailed(
                f"cannot connect to QMP socket {self.address}: {exc!r}", vm=self._vm) from exc
        self._forget_device()

    async def _open_socket(self) -> socket.socket:
        # The socket is opened here rather than by qemu.qmp so that a timeout can tell
        # "not accepting" from "accepted but silent" (the busy case).
        loop = asyncio.get_running_loop()
        addr = _parse_address(self.address)
        if isinstance(addr, tuple):
            infos = await loop.getaddrinfo(addr[0], addr[1], type=socket.SOCK_STREAM)
            family, kind, proto, _, sockaddr = infos[0]
            sock = socket.socket(family, kind, proto)
            target: Any = sockaddr
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target = addr
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, target)
        except BaseException:
            sock.close()
            raise
        return sock

    async def _reap(self) -> BaseException | None:
        """Bring a dropped transport back to IDLE; return what ended the session."""
        try:
            await self._qmp.disconnect()
        except Exception as exc:  # the cause of the drop, for the caller
            return exc
        return None

    async def close(self) -> None:
        """Disconnect (never raises on a connection that already dropped)."""
        self._closes += 1
        async with self._lock:
            if self._qmp.runstate is not Runstate.IDLE:
                await self._reap()

    def _forget_device(self) -> None:
        # A reconnect may reach a different QEMU process behind the same socket path.
        self._device = None
        self._device_props = None
        self._guest_ram = None
        self._features = None

    # ---- commands ---------------------------------------------------------------------

    async def execute(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        """Run one QMP command within ``command_timeout``; connects first when needed.

        Raises:
            ConnectFailed, SocketBusy: (re)connecting failed.
            QMPCommandError: QEMU answered with an error (``sent``/``received`` kept).
            NoBalloonDevice: QEMU answered DeviceNotActive.
            QMPTimeout: no reply in time.
            Disconnected: the connection dropped; the next call reconnects.
        """
        if not self.connected:
            await self.connect()
        qmp = self._qmp
        try:
            async with asyncio.timeout(self.command_timeout):
                return await qmp.execute(cmd, args)
        except Exception as exc:
            where = _Failure(self.address, self._vm, cmd, args, timeout=self.command_timeout)
            if isinstance(exc, ExecInterruptedError | StateError):
                async with self._lock:
                    if qmp is self._qmp and qmp.runstate is not Runstate.RUNNING:
                        where.cause = await self._reap()
            translated = _translate(exc, where)
            if translated is None:
                raise
            raise translated from exc

    async def _qom_get(self, path: str, prop: str) -> Any:
        return await self.execute("qom-get", {"path": path, "property": prop})

    async def device_path(self) -> str:
        """The balloon device's QOM path (``/machine/peripheral/balloon0`` or an anon one).

        Raises:
            NoBalloonDevice: the VM has no virtio-balloon device.
            (and what ``execute`` raises)
        """
        if self._device is not None:
            return self._device
        for parent in ("/machine/peripheral", "/machine/peripheral-anon"):
            try:
                children = await self.execute("qom-list", {"path": parent})
            except QMPCommandError as exc:
                if exc.error_class == "DeviceNotFound":
                    continue  # no -device with(out) an id at all
                raise
            for child in children:
                if child.get("type") in BALLOON_TYPES:
                    self._device = f"{parent}/{child['name']}"
                    return self._device
        raise NoBalloonDevice(NO_DEVICE_MESSAGE, vm=self._vm, error_class="DeviceNotActive")

    async def _properties(self) -> dict[str, str]:
        """The balloon device's QOM properties (name -> type), cached per connection."""
        if self._device_props is None:
            path = await self.device_path()
            props = await self.execute("qom-list", {"path": path})
            self._device_props = {p["name"]: p.get("type", "") for p in props}
        return self._device_props

    async def query_actual(self) -> int:
        """Current guest RAM as the balloon leaves it (``query-balloon`` actual), in bytes.

        Raises:
            NoBalloonDevice, and what ``execute`` raises.
        """
        return _int_field(await self.execute("query-balloon"), "actual", "query-balloon",
                          self._vm)

    async def guest_ram(self) -> int:
        """The VM's RAM size (``query-memory-size-summary`` base-memory), in bytes.

        Raises:
            what ``execute`` raises.
        """
        if self._guest_ram is None:
            reply = await self.execute("query-memory-size-summary")
            self._guest_ram = _int_field(reply, "base-memory", "query-memory-size-summary",
                                         self._vm)
        return self._guest_ram

    async def features(self) -> DeviceFeatures:
        """The device's fixed properties; ``None`` for any this QEMU does not have.

        Raises:
            NoBalloonDevice, and what ``execute`` raises.
        """
        if self._features is None:
            path = await self.device_path()
            values: list[bool | None] = []
            for prop in ("deflate-on-oom", "free-page-reporting", "free-page-hint"):
                try:
                    values.append(bool(await self._qom_get(path, prop)))
                except NoBalloonDevice:
                    raise
                except QMPCommandError:
                    values.append(None)  # older QEMU: no such property
            self._features = DeviceFeatures(*values)
        return self._features

    async def stats(self) -> GuestStats:
        """The guest's memory stats (``qom-get guest-stats``); unreported values are None.

        Raises:
            NoBalloonDevice, and what ``execute`` raises.
        """
        path = await self.device_path()
        return GuestStats.from_qom(await self._qom_get(path, "guest-stats"))

    async def polling_interval(self) -> int:
        """Seconds between guest stats updates; 0 means off.

        Raises:
            NoBalloonDevice, and what ``execute`` raises.
        """
        path = await self.device_path()
        return int(await self._qom_get(path, "guest-stats-polling-interval"))

    async def enable_stats(self, interval: int) -> None:
        """Ask the guest to push stats every ``interval`` seconds (0 turns polling off).

        Raises:
            QMPCommandError: QEMU refused the interval (e.g. negative).
            NoBalloonDevice, and what ``execute`` raises.
        """
        path = await self.device_path()
        await self.execute("qom-set", {"path": path, "property": "guest-stats-polling-interval",
                                       "value": int(interval)})

    # ---- targets ----------------------------------------------------------------------

    def _remembered(self) -> dict[str, Any]:
        return self.store.get(self.address)

    def last_target(self) -> int | None:
        """The last target balloonctl set on this VM (from the store), if any."""
        value = self._remembered().get("target")
        return value if isinstance(value, int) else None

    def floor(self, guest_ram: int) -> int:
        """The safe floor for this VM: ``minimum`` or ``default_floor(guest_ram)``."""
        return default_floor(guest_ram) if self.minimum is None else self.minimum

    async def resolve_target(self, spec: TargetSpec | int, *, force: bool = False) -> int:
        """Resolve ``spec`` against guest RAM and the current target, and validate it.

        Relative targets count from the last target balloonctl set (else ``actual``).
        ``force`` allows going below the floor, never below ``HARD_MINIMUM``.

        Raises:
            SizeError: a relative target would be zero or negative.
            UnsafeTarget: above guest RAM or the maximum, below the floor (or hard minimum).
            NoBalloonDevice, and what ``execute`` raises.
        """
        ram = await self.guest_ram()
        if isinstance(spec, int):
            target = spec
        else:
            current = self.last_target()
            if current is None or current > ram:  # nothing remembered, or another VM's
                current = await self.query_actual()
            target = spec.resolve(guest_ram=ram, current=current)
        return validate_target(target, guest_ram=ram, minimum=self.minimum,
                               maximum=self.maximum, force=force, vm=self._vm)

    async def set_target(self, spec: TargetSpec | int, *, force: bool = False,
                         dry_run: bool = False) -> int:
        """Resolve, validate and send a balloon target; return it in bytes.

        Nothing is sent when the target is unsafe or ``dry_run`` is set. With the
        agent-mode cache-first hint on, an inflation first has the guest drop clean page
        cache (a failure there is recorded in the hint state, and the inflation goes on).

        Raises:
            SizeError, UnsafeTarget: see ``resolve_target`` (nothing was sent).
            NoBalloonDevice, and what ``execute`` raises.
        """
        target = await self.resolve_target(spec, force=force)
        if dry_run:
            return target
        # QEMU answers DeviceNotActive here when there is no balloon; query first so a VM
        # without one fails before the agent does any work.
        actual = await self.query_actual()
        if target < actual and self.qga is not None and self._remembered().get("hint"):
            if (await self.hint_status()).mode is HintMode.AGENT:
                await self._drop_cache_before_inflating()
        await self.execute("balloon", {"value": target})
        self.store.update(self.address, target=target, target_at=time.time())
        return target

    async def wait_for_target(self, target: int, *,
                              timeout: float = 60.0,  # noqa: ASYNC109 - the contract's API
                              stall_timeout: float = 5.0,
                              progress: Callable[[int, int], None] | None = None) -> int:
        """Poll ``query-balloon`` until ``actual`` is within ``CONVERGED_TOLERANCE`` of target.

        ``progress(actual, target)`` is called after every poll. Returns the final actual.

        Raises:
            DriverNotReady: the guest driver never reported and ``actual`` does not move.
            StuckBalloon: ``actual`` has not moved for ``stall_timeout`` seconds.
            WaitTimeout: not converged within ``timeout`` seconds.
            (and what ``execute`` raises)
        """
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + timeout
        first_actual: int | None = None
        last_actual: int | None = None
        last_move = start
        while True:
            actual = await self.query_actual()
            now = loop.time()
            if progress is not None:
                progress(actual, target)
            if abs(actual - target) <= CONVERGED_TOLERANCE:
                return actual
            if first_actual is None:
                first_actual = actual
            if actual != last_actual:
                last_actual, last_move = actual, now
            stalled = now - last_move >= stall_timeout
            if stalled or now >= deadline:
                stats = await self.stats()
                if not stats.reported and actual == first_actual:
                    raise DriverNotReady(
                        "the guest has not loaded the virtio_balloon driver (no stats ever "
                        f"reported) and actual stays at {format_size(actual)}", vm=self._vm)
                left = format_size(abs(actual - target))
                if stalled:
                    raise StuckBalloon(
                        f"balloon stuck at {format_size(actual)}, {left} short of the target "
                        f"{format_size(target)}: no movement for {stall_timeout:g}s (the guest "
                        "may be unable to free more memory)",
                        vm=self._vm, actual=actual, target=target)
                raise WaitTimeout(
                    f"balloon did not reach {format_size(target)} within {timeout:g}s "
                    f"(actual {format_size(actual)}, {left} to go)",
                    vm=self._vm, actual=actual, target=target)
            await asyncio.sleep(min(POLL_INTERVAL, max(0.0, deadline - now)))

    # ---- cache-first hint -------------------------------------------------------------

    def _agent(self, *, probe: bool = False) -> GuestAgent:
        # A probe (hint status, in every snapshot) must not stall on a guest whose agent is
        # not running: the socket accepts, nothing answers.
        assert self.qga is not None
        timeout = min(self.command_timeout, 5.0)
        if probe:
            timeout = min(timeout, self.connect_timeout, 2.0)
        return GuestAgent(self.qga, timeout=timeout, trace=self.trace,
                          name=f"{self.name}/qga", vm=self._vm)

    async def _probe_hint(self) -> tuple[HintState, AgentError | None]:
        """Find how the hint can be honoured here, without changing anything; also return
        the agent failure that makes it unsupported, if that is the reason."""
        props = await self._properties()
        if HINT_PROPERTY in props:  # a patched device; its QOM type is "bool"
            path = await self.device_path()
            enabled = bool(await self._qom_get(path, HINT_PROPERTY))
            return HintState(HintMode.DEVICE, enabled,
                             f"balloon device property {HINT_PROPERTY}"), None
        if self.qga is None:
            return HintState(HintMode.UNSUPPORTED, False, HINT_UNSUPPORTED_MESSAGE), None
        remembered = self._remembered()
        try:
            async with self._agent(probe=True) as agent:
                await agent.require_exec()
        except AgentError as exc:
            why = "guest-exec is blocked" if isinstance(exc, AgentExecBlocked) else (
                "the guest agent is unreachable")
            detail = f"{why} ({exc}); {HINT_UNSUPPORTED_MESSAGE}"
            if remembered.get("hint"):
                detail = f"the hint is on in balloonctl's state but not honoured: {detail}"
            return HintState(HintMode.UNSUPPORTED, False, detail), exc
        enabled = bool(remembered.get("hint"))
        released = remembered.get("hint_released")
        detail = "guest agent drops clean page cache before each inflation"
        if remembered.get("hint_error"):
            detail += f"; last drop failed: {remembered['hint_error']}"
        elif isinstance(released, int):
            detail += f"; last drop released {format_size(released)}"
        return HintState(HintMode.AGENT, enabled, detail,
                         released if isinstance(released, int) else None), None

    async def hint_status(self) -> HintState:
        """How the cache-first hint is honoured on this VM (device, agent or unsupported).

        Raises:
            NoBalloonDevice, and what ``execute`` raises.
        """
        state, _ = await self._probe_hint()
        return state

    async def set_hint(self, on: bool) -> HintState:
        """Turn the cache-first hint on or off and return the resulting state.

        Device mode sets the device's ``reclaim-cache-first`` property; agent mode records
        the choice in the store (it applies to later inflations, from any balloonctl run).

        Raises:
            HintUnsupported: ``on`` and no way to honour it (the message says what would).
            AgentExecBlocked: the guest agent refuses guest-exec.
            NoBalloonDevice, and what ``execute`` raises.
        """
        state, agent_error = await self._probe_hint()
        if state.mode is HintMode.DEVICE:
            path = await self.device_path()
            await self.execute("qom-set", {"path": path, "property": HINT_PROPERTY,
                                           "value": bool(on)})
            return await self.hint_status()
        if state.mode is HintMode.UNSUPPORTED:
            if on:
                if isinstance(agent_error, AgentExecBlocked):
                    raise agent_error
                raise HintUnsupported(f"cannot honour the cache-first hint: {state.detail}",
                                      vm=self._vm)
            self.store.update(self.address, hint=False)
            return state
        self.store.update(self.address, hint=bool(on))
        return await self.hint_status()

    async def _next_sample(self, previous: GuestStats, wait: float) -> GuestStats | None:
        """The first stats sample newer than ``previous``, or None after ``wait`` seconds.

        ``last-update`` is whole seconds and the guest pushes at most once per polling
        interval (1 s here), so a changed ``last-update`` is a sample received after
        ``previous`` was read.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while loop.time() < deadline:
            await asyncio.sleep(POLL_INTERVAL)
            stats = await self.stats()
            if stats.last_update != previous.last_update:
                return stats
        return None

    async def _drop_cache_before_inflating(self) -> None:
        """Agent-mode hint: have the guest drop clean page cache and measure what it freed.

        The release is ``stat-disk-caches`` in the first sample the guest pushes after this
        starts minus the first one after the drop (up to about two polling intervals of
        extra latency per inflation while the hint is on). The guest pushes
        stats only on its polling interval, so for the measurement the interval is set to
        1 s when it is off (QEMU then asks for a sample at once) or longer than 2 s, and
        restored afterwards. Each sample is awaited at most ``STATS_REFRESH_WAIT`` seconds;
        a release that could not be measured is recorded as unknown (None).
        """
        interval = await self.polling_interval()
        before = await self.stats()
        if interval == 0 or interval > 2:
            await self.enable_stats(1)
        try:
            # Even with polling on, the latest sample may predate what the guest did since.
            before = await self._next_sample(before, STATS_REFRESH_WAIT) or before
            try:
                async with self._agent() as agent:
                    await agent.drop_caches()
            except AgentError as exc:
                log.warning("%s: cache-first drop failed: %s", self.name, exc)
                self.store.update(self.address, hint_error=str(exc), hint_released=None,
                                  hint_at=time.time())
                return
            after = await self._next_sample(await self.stats(), STATS_REFRESH_WAIT)
        finally:
            if interval == 0 or interval > 2:
                await self.enable_stats(interval)
        released: int | None = None
        if after is not None and before.disk_caches is not None and after.disk_caches is not None:
            released = max(0, before.disk_caches - after.disk_caches)
        self.store.update(self.address, hint_released=released, hint_error=None,
                          hint_at=time.time())

    # ---- snapshot and events ----------------------------------------------------------

    async def snapshot(self) -> BalloonState:
        """Everything about this VM's balloon in one ``BalloonState``. Never raises
        ``BalloonError``: failures become fields (``reachable``, ``error``, ``has_device``).
        """
        state = BalloonState(name=self.name, qmp=self.address, target=self.last_target())
        try:
            await self.connect()
        except BalloonError as exc:
            return _failed(state, exc, reachable=False)
        try:
            ram = await self.guest_ram()
            state = state.with_changes(reachable=True, guest_ram=ram, floor=self.floor(ram))
            actual = await self.query_actual()
            state = state.with_changes(actual=actual)
            stats, interval = await asyncio.gather(self.stats(), self.polling_interval())
            state = state.with_changes(stats=stats, polling_interval=interval,
                                       features=await self.features())
            state = state.with_changes(hint=await self.hint_status())
        except NoBalloonDevice as exc:
            return _failed(state, exc, reachable=True).with_changes(has_device=False)
        except (ConnectFailed, Disconnected, QMPTimeout) as exc:
            return _failed(state, exc, reachable=False)
        except BalloonError as exc:
            return _failed(state, exc, reachable=True)
        return state.with_changes(taken_at=time.time())

    async def events(self) -> AsyncIterator[BalloonEvent]:
        """QMP events (BALLOON_CHANGE, SHUTDOWN, ...) as they arrive; notifications only.

        Connects first. Up to ``EVENT_BUFFER`` unread events are kept (oldest dropped).
        Events that arrived before the connection dropped are delivered first.

        The iterator ends quietly when the client is closed.

        Raises:
            Disconnected: the connection dropped (the next call on the client reconnects).
            ConnectFailed, SocketBusy: connecting failed.
        """
        await self.connect()
        qmp = self._qmp
        closes = self._closes
        listener = BoundedEventListener()
        qmp.register_listener(listener)
        try:
            while True:
                if not listener.empty():
                    yield BalloonEvent.from_message(await listener.get())
                    continue
                if qmp is not self._qmp or qmp.runstate is not Runstate.RUNNING:
                    break
                getter = asyncio.ensure_future(listener.get())
                down = asyncio.ensure_future(qmp.not_running.wait())
                try:
                    await asyncio.wait({getter, down}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    down.cancel()
                    if not getter.done():
                        getter.cancel()
                if getter.done() and not getter.cancelled():
                    yield BalloonEvent.from_message(getter.result())
        finally:
            qmp.remove_listener(listener)
        if self._closes != closes:
            return  # close() ended it
        cause: BaseException | None = None
        async with self._lock:
            if qmp is self._qmp and qmp.runstate is Runstate.DISCONNECTING:
                cause = await self._reap()
        raise Disconnected(f"QMP connection to {self.address} closed: "
                           f"{_describe_cause(cause)}", vm=self._vm)


def _failed(state: BalloonState, exc: BalloonError, *, reachable: bool) -> BalloonState:
    return state.with_changes(reachable=reachable, error=exc.message,
                              error_kind=type(exc).__name__, taken_at=time.time())

