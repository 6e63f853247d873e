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
    "RunFacts",
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
# How long the agent-mode hint waits for the guest to push a fresh stats sample, and how
# often it looks (qom-get guest-stats) meanwhile: last-update has whole-second resolution,
# so polling faster than a few times a second only costs round trips.
STATS_REFRESH_WAIT: Final = 3.0
STATS_POLL_INTERVAL: Final = 0.3
# A stored target that the VM has not reached this long after balloonctl set it is taken
# as unknown: something else (virsh, qmp-shell, another tool) has probably changed it.
TARGET_STALE_AFTER: Final = 120.0
# Store keys that describe the last target; forgotten together when it goes stale.
_TARGET_KEYS: Final = ("target", "target_at", "target_reached")
# Events kept per listener (queue) and in its history; older ones are dropped.
EVENT_BUFFER: Final = 256
# How long a run's vCPU thread id, once read over QMP, is trusted on later connections that
# find the same socket file (RunFacts): the file alone already names the run; re-reading
# the thread id now and then covers a file system that reuses an inode within its
# timestamp granularity.
RUN_RECHECK: Final = 60.0
# How long a guest-agent probe's answer (guest-exec allowed, or refused) is trusted; an
# unreachable agent is asked again at the next probe.
AGENT_RECHECK: Final = 30.0
_UNKNOWN_THREAD: Final = "vcpu0-thread:unknown"


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


@dataclass(frozen=True, slots=True)
class RunFacts:
    """What a client learned about one run of a VM that stays fixed while it runs, so that
    a later connection to the same run can skip asking (``BalloonClient(facts=...)``,
    ``BalloonClient.run_facts()``; ``Fleet``'s polite mode hands them from one connection
    to the next).

    ``socket`` and ``run`` name the run as ``instance_id`` does: the unix socket file's
    identity (None over TCP) and vCPU 0's host thread; ``run_checked`` is the
    ``time.monotonic()`` at which ``run`` was last read over QMP. ``None`` fields were not
    learned. ``agent_checked`` is when the guest agent was last probed for guest-exec (the
    cache-first hint) and ``agent_error`` its refusal (None: guest-exec allowed).

    A command failing with DeviceNotFound or DeviceNotActive forgets the device's facts. A
    balloon device unplugged and plugged again under the same id between two connections
    goes unnoticed: its features are the first device's until the VM restarts.
    """

    socket: str | None
    run: str
    run_checked: float
    device: str | None = None
    properties: Mapping[str, str] | None = None
    guest_ram: int | None = None
    features: DeviceFeatures | None = None
    agent_checked: float | None = None
    agent_error: AgentExecBlocked | None = None


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


async def _connect_unix(sock: socket.socket, path: str) -> None:
    """Connect a non-blocking unix socket, waiting (until the caller's timeout) while the
    listener's queue is full.

    Linux fails such a connect() at once with EAGAIN and starts nothing; asyncio's
    ``sock_connect`` would then wait for "writable", which an unconnected unix socket is at
    once, and report a connection that does not exist (the next read fails with EINVAL).
    """
    delay = 0.005
    while True:
        try:
            sock.connect(path)
            return
        except BlockingIOError:
            await asyncio.sleep(delay)
            delay = min(2 * delay, 0.1)


def _socket_identity(path: str) -> str | None:
    """The unix socket file's identity; QEMU (and the fake) create the file anew at every
    start, so it names one run of the VM. None when the file is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"unix:{st.st_dev}:{st.st_ino}:{st.st_ctime_ns}"


class BalloonClient:
    """One VM's balloon over QMP. Connects lazily; reconnects on the call after a drop.

    ``address`` is a unix socket path or ``host:port``; ``qga`` the guest-agent socket (used
    by the cache-first hint). ``minimum``/``maximum`` bound targets (``default_floor`` when
    ``minimum`` is None). ``trace`` sees every QMP message sent and received.

    ``store`` remembers the last target and the agent-mode hint, keyed by ``address`` and
    tied to one run of the VM (``instance_id``): an entry written for another run, or
    without an instance (older balloonctl), is ignored and replaced by the next write, so a
    restarted VM starts with no target and the hint at ``hint`` (the inventory's
    preference; off when None). A remembered target also stops counting (``current_target``)
    once the VM shows it was changed behind balloonctl's back: ``actual`` left the target
    after reaching it, or has not reached it ``target_stale_after`` seconds after it was set.

    What stays fixed while the VM runs (device path and properties, guest RAM, features, the
    guest agent's answer) is read once per run and kept across reconnects; ``facts`` (from
    another client's ``run_facts()``) seeds it, and is used only once this client's
    connection shows the same run (see ``RunFacts`` and ``instance_id``).
    """

    def __init__(self, address: str, *, name: str | None = None, qga: str | None = None,
                 connect_timeout: float = 3.0, command_timeout: float = 10.0,
                 store: Store | None = None, minimum: int | None = None,
                 maximum: int | None = None, trace: Trace | None = None,
                 hint: bool | None = None,
                 target_stale_after: float = TARGET_STALE_AFTER,
                 facts: RunFacts | None = None) -> None:
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
        self.hint_preference = hint
        self.target_stale_after = target_stale_after
        self._qmp = _Transport(self.name, trace)
        self._lock = asyncio.Lock()
        self._device: str | None = None
        self._device_props: dict[str, str] | None = None
        self._guest_ram: int | None = None
        self._features: DeviceFeatures | None = None
        self._run_id: str | None = None  # vCPU 0's thread: the run behind this connection
        self._socket_id: str | None = None  # the socket file when _run_id was learned
        self._conn_socket: str | None = None  # the socket file at this connection's start
        self._run_checked = 0.0  # time.monotonic() when _run_id was read over QMP
        self._agent_checked: float | None = None  # see RunFacts
        self._agent_error: AgentExecBlocked | None = None
        # Facts of an earlier connection, used once this one shows it reaches the same run.
        self._earlier: RunFacts | None = facts
        self._addr = _parse_address(address)
        self._closes = 0  # close() calls so far: an event stream ended by close() is quiet

    @classmethod
    def from_ref(cls, ref: VmRef, **kw: Any) -> BalloonClient:
        """A client for an inventory entry (name, sockets and limits come from ``ref``)."""
        kw.setdefault("name", ref.name)
        kw.setdefault("qga", ref.qga)
        kw.setdefault("minimum", ref.minimum)
        kw.setdefault("maximum", ref.maximum)
        kw.setdefault("hint", ref.hint)
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
        # A reconnect may reach a different QEMU process behind the same socket path: what
        # the last connection learned is used again only once this one shows the same run.
        self._earlier = self.run_facts() or self._earlier
        self._forget_device()
        # The socket file this connection reached (QEMU re-creates it at every start).
        self._conn_socket = None if isinstance(self._addr, tuple) else _socket_identity(
            self._addr)
        self._recall(checked=False)

    async def _open_socket(self) -> socket.socket:
        # The socket is opened here rather than by qemu.qmp so that a timeout can tell
        # "not accepting" from "accepted but silent" (the busy case).
        loop = asyncio.get_running_loop()
        addr = self._addr
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
            if isinstance(addr, tuple):
                await loop.sock_connect(sock, target)
            else:
                await _connect_unix(sock, addr)
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
        self._forget_device_facts()
        self._guest_ram = None
        self._run_id = None
        self._socket_id = None
        self._agent_checked = None
        self._agent_error = None

    def _forget_device_facts(self) -> None:
        # The balloon device may have been unplugged (and another one plugged) at runtime.
        self._device = None
        self._device_props = None
        self._features = None

    # ---- facts of one run, kept across connections ---------------------------------------

    def run_facts(self) -> RunFacts | None:
        """What this client learned about the VM's current run that stays fixed while it
        runs (no I/O); None before it has read the run's identity (``instance_id``).
        Give it to a later client as ``facts=`` to spare it the queries.
        """
        if self._run_id is None:
            return None
        return RunFacts(
            socket=self._socket_id, run=self._run_id, run_checked=self._run_checked,
            device=self._device,
            properties=None if self._device_props is None else dict(self._device_props),
            guest_ram=self._guest_ram, features=self._features,
            agent_checked=self._agent_checked, agent_error=self._agent_error)

    def _recall(self, *, checked: bool, run: str | None = None) -> None:
        """Take over the earlier connection's facts if they are of the run this one reaches.

        ``checked=False`` (just connected, no I/O): a unix socket file that is still the one
        the facts were learned on names the same run, while the facts' thread id is younger
        than ``RUN_RECHECK``; otherwise the facts wait for ``instance_id`` to read the
        thread id, which calls this with ``checked=True`` and that ``run``.
        """
        earlier = self._earlier
        if earlier is None:
            return
        socket_id = self._conn_socket
        if socket_id != earlier.socket:
            self._earlier = None  # the socket file was re-created: QEMU restarted
            return
        if checked:
            self._earlier = None
            if run != earlier.run or (socket_id is None and run == _UNKNOWN_THREAD):
                return  # another run (over TCP an unknown thread tells nothing)
            run_checked = time.monotonic()
        else:
            if socket_id is None or time.monotonic() - earlier.run_checked >= RUN_RECHECK:
                return
            self._earlier = None
            run_checked = earlier.run_checked
        self._run_id, self._socket_id, self._run_checked = earlier.run, socket_id, run_checked
        if self._device is None:
            self._device = earlier.device
        if self._device_props is None and earlier.properties is not None:
            self._device_props = dict(earlier.properties)
        if self._guest_ram is None:
            self._guest_ram = earlier.guest_ram
        if self._features is None:
            self._features = earlier.features
        if self._agent_checked is None:
            self._agent_checked, self._agent_error = earlier.agent_checked, earlier.agent_error

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
            if isinstance(translated, QMPCommandError) and translated.error_class in (
                    "DeviceNotFound", "DeviceNotActive"):
                self._forget_device_facts()
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
                except QMPCommandError as exc:
                    if exc.error_class in ("DeviceNotFound", "DeviceNotActive"):
                        raise
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

    # ---- what the store remembers about this VM instance -------------------------------

    async def instance_id(self) -> str | None:
        """An identity of the VM instance (one run of QEMU) behind ``address``.

        Made of the host thread id of vCPU 0 (``query-cpus-fast``; a new QEMU process has
        new threads), and for a unix socket the socket file's device, inode and ctime as
        the connection found them (QEMU re-creates the file at every start; the thread id
        covers a file system that reuses the inode within its timestamp granularity). The
        thread id is read once per connection, or taken from ``facts`` of an earlier
        connection that found the same socket file less than ``RUN_RECHECK`` seconds after
        it was read (``run_facts``). A QEMU that reports no thread id over TCP leaves
        nothing to tell runs apart: then only the staleness rule of ``current_target``
        guards the target. None when the unix socket was gone.

        Raises:
            what ``execute`` raises (it connects when needed).
        """
        if not self.connected:
            await self.connect()  # recalls the run when the socket file is the one seen
        if self._run_id is None:
            run = await self._vcpu_thread_identity()
            self._recall(checked=True, run=run)
            if self._run_id is None:
                self._run_id, self._socket_id = run, self._conn_socket
                self._run_checked = time.monotonic()
        return self._known_instance()

    async def _vcpu_thread_identity(self) -> str:
        try:
            cpus = await self.execute("query-cpus-fast")
        except QMPCommandError:
            return _UNKNOWN_THREAD
        for cpu in cpus if isinstance(cpus, list) else []:
            if isinstance(cpu, dict) and cpu.get("cpu-index") == 0 and "thread-id" in cpu:
                return f"vcpu0-thread:{cpu['thread-id']}"
        return _UNKNOWN_THREAD

    def _known_instance(self) -> str | None:
        """``instance_id`` without I/O: None when not connected (or the socket was gone)."""
        if self._run_id is None or not self.connected:
            return None
        if isinstance(self._addr, str):
            # The file as this connection found it: QEMU cannot have restarted behind a
            # connection that is still up.
            socket_id = self._conn_socket
            return None if socket_id is None else f"{socket_id} {self._run_id}"
        return f"tcp {self._run_id}"

    def _entry(self, instance: str | None) -> dict[str, Any]:
        """The store entry of this VM instance; {} if the entry belongs to another run."""
        if instance is None:
            return {}
        entry = self.store.get(self.address)
        return entry if entry.get("instance") == instance else {}

    async def _remembered(self) -> dict[str, Any]:
        return self._entry(await self.instance_id())

    async def _remember(self, **values: Any) -> None:
        """Record ``values`` for this VM instance, dropping what another run left."""
        instance = await self.instance_id()

        def change(entry: dict[str, Any]) -> dict[str, Any]:
            if instance is None or entry.get("instance") != instance:
                entry = {"instance": instance}
            return {**entry, **values}

        self.store.edit(self.address, change)

    def _hint_on(self, entry: dict[str, Any]) -> bool:
        """The agent-mode hint: as set on this instance, else the inventory's preference."""
        return bool(entry.get("hint", self.hint_preference is True))

    def last_target(self) -> int | None:
        """The last target balloonctl set on this VM instance (from the store), if any.

        Does no I/O, so it knows the instance only after a call on this connection has
        read it (``resolve_target``, ``set_target``, ``current_target``, ``snapshot``, the
        hint calls), and returns None before. It does not apply the staleness rule;
        ``current_target`` does (and forgets a stale target; this returns None after).
        """
        value = self._entry(self._known_instance()).get("target")
        return value if isinstance(value, int) else None

    async def current_target(self, *, actual: int | None = None,
                             guest_ram: int | None = None) -> int | None:
        """The target balloonctl set on this VM instance, if it still stands; else None.

        A remembered target stops standing when it is above guest RAM (another VM once had
        this address), when ``actual`` reached it once and has left it since (QEMU never
        moves off a reached target by itself: another QMP client changed it), or when
        ``actual`` has not reached it ``target_stale_after`` seconds after it was set. A
        stale target is forgotten. ``actual``/``guest_ram`` are queried when not given.

        Raises:
            NoBalloonDevice, and what ``execute`` raises.
        """
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

        def same_target(e: dict[str, Any]) -> bool:
            return (e.get("instance") == instance and e.get("target") == target
                    and e.get("target_at") == set_at)

        if abs(actual - target) <= CONVERGED_TOLERANCE:
            if not entry.get("target_reached"):
                self._edit_quietly(lambda e: {**e, "target_reached": True}
                                   if same_target(e) else e)
            return target
        too_old = (not isinstance(set_at, int | float)
                   or time.time() - set_at > self.target_stale_after)
        if entry.get("target_reached") or too_old:
            log.info("%s: forgetting stale target %s (actual %s)", self.name,
                     format_size(target), format_size(actual))
            self._edit_quietly(lambda e: {k: v for k, v in e.items() if k not in _TARGET_KEYS}
                               if same_target(e) else e)
            return None
        return target

    def _edit_quietly(self, change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        # Bookkeeping done while reading: a store that cannot be written (read-only state
        # directory) must not fail a snapshot; the same conclusion is drawn next time.
        try:
            self.store.edit(self.address, change)
        except OSError as exc:
            log.warning("%s: cannot update balloonctl's state: %s", self.name, exc)

    def floor(self, guest_ram: int) -> int:
        """The safe floor for this VM: ``minimum`` or ``default_floor(guest_ram)``."""
        return default_floor(guest_ram) if self.minimum is None else self.minimum

    async def resolve_target(self, spec: TargetSpec | int, *, force: bool = False) -> int:
        """Resolve ``spec`` against guest RAM and the current target, and validate it.

        Relative targets count from the last target balloonctl set on this VM instance
        while it stands (``current_target``), else from ``actual``.
        ``force`` allows going below the floor, never below ``HARD_MINIMUM``.

        Raises:
            SizeError: a relative target would be zero or negative.
            UnsafeTarget: above guest RAM or the maximum, below the floor (or hard minimum).
            NoBalloonDevice, and what ``execute`` raises.
        """
        await self.instance_id()  # once per connection; last_target() knows the run after
        ram = await self.guest_ram()
        if isinstance(spec, int):
            target = spec
        else:
            actual = await self.query_actual()
            current = await self.current_target(actual=actual, guest_ram=ram)
            if current is None:
                current = actual
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
        if (target < actual and self.qga is not None
                and self._hint_on(await self._remembered())):
            if (await self.hint_status()).mode is HintMode.AGENT:
                await self._drop_cache_before_inflating()
        await self.execute("balloon", {"value": target})
        await self._remember(target=target, target_at=time.time(), target_reached=False)
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
                await self.current_target(actual=actual)  # notes a remembered target reached
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

    async def _agent_refusal(self, *, fresh: bool) -> AgentError | None:
        """Why the guest agent cannot run the cache-first drop (None: it can).

        An answer (guest-exec allowed or refused) is reused for ``AGENT_RECHECK`` seconds
        unless ``fresh``; an unreachable agent is asked again next time.
        """
        now = time.monotonic()
        if (not fresh and self._agent_checked is not None
                and now - self._agent_checked < AGENT_RECHECK):
            return self._agent_error
        self._agent_checked = None
        try:
            async with self._agent(probe=True) as agent:
                await agent.require_exec()
        except AgentExecBlocked as exc:
            self._agent_checked, self._agent_error = now, exc
            return exc
        except AgentError as exc:
            return exc
        self._agent_checked, self._agent_error = now, None
        return None

    async def _probe_hint(self, *, fresh: bool = False) -> tuple[HintState, AgentError | None]:
        """Find how the hint can be honoured here, without changing anything; also return
        the agent failure that makes it unsupported, if that is the reason. The agent's
        answer may be up to ``AGENT_RECHECK`` seconds old unless ``fresh``; whether the hint
        is on always comes from the device or the store."""
        props = await self._properties()
        if HINT_PROPERTY in props:  # a patched device; its QOM type is "bool"
            path = await self.device_path()
            enabled = bool(await self._qom_get(path, HINT_PROPERTY))
            return HintState(HintMode.DEVICE, enabled,
                             f"balloon device property {HINT_PROPERTY}"), None
        if self.qga is None:
            return HintState(HintMode.UNSUPPORTED, False, HINT_UNSUPPORTED_MESSAGE), None
        remembered = await self._remembered()
        refusal = await self._agent_refusal(fresh=fresh)
        if refusal is not None:
            why = "guest-exec is blocked" if isinstance(refusal, AgentExecBlocked) else (
                "the guest agent is unreachable")
            detail = f"{why} ({refusal}); {HINT_UNSUPPORTED_MESSAGE}"
            if self._hint_on(remembered):
                detail = f"the hint is on in balloonctl's state but not honoured: {detail}"
            return HintState(HintMode.UNSUPPORTED, False, detail), refusal
        enabled = self._hint_on(remembered)
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

        Whether the guest agent allows guest-exec is probed at most every ``AGENT_RECHECK``
        seconds for this run of the VM (every time while the agent is unreachable).

        Raises:
            NoBalloonDevice, and what ``execute`` raises.
        """
        state, _ = await self._probe_hint()
        return state

    async def set_hint(self, on: bool) -> HintState:
        """Turn the cache-first hint on or off and return the resulting state.

        Device mode sets the device's ``reclaim-cache-first`` property; agent mode records
        the choice in the store (it applies to later inflations, from any balloonctl run,
        until the VM restarts).

        Raises:
            HintUnsupported: ``on`` and no way to honour it (the message says what would).
            AgentExecBlocked: the guest agent refuses guest-exec.
            NoBalloonDevice, and what ``execute`` raises.
        """
        state, agent_error = await self._probe_hint(fresh=True)
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
            await self._remember(hint=False)
            return state
        await self._remember(hint=bool(on))
        return await self.hint_status()

    async def _next_sample(self, previous: GuestStats, wait: float) -> GuestStats | None:
        """The first stats sample newer than ``previous``, or None after ``wait`` seconds.

        ``last-update`` is whole seconds and the guest pushes at most once per polling
        interval (1 s here), so a changed ``last-update`` is a sample received after
        ``previous`` was read. Looks every ``STATS_POLL_INTERVAL`` seconds (at most
        ``wait / STATS_POLL_INTERVAL`` + 1 ``qom-get`` calls); the last look is at the
        deadline, so this returns within about ``wait`` plus one round trip.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while (left := deadline - loop.time()) > 0:
            await asyncio.sleep(min(STATS_POLL_INTERVAL, left))
            stats = await self.stats()
            if stats.last_update != previous.last_update:
                return stats
        return None

    async def _drop_cache_before_inflating(self) -> None:
        """Agent-mode hint: have the guest drop clean page cache and measure what it freed.

        The release is ``stat-disk-caches`` in the first sample the guest pushes after this
        starts minus the first one after the drop. The guest pushes stats only on its
        polling interval, so for the measurement the interval is set to 1 s when it is off
        (QEMU then asks for a sample at once) or longer than 2 s, and restored afterwards.

        Added latency per inflation while the hint is on: the two samples, each awaited at
        most ``STATS_REFRESH_WAIT`` (3 s) and looked for every ``STATS_POLL_INTERVAL``
        (0.3 s), plus the guest-exec of the drop (bounded by the agent's timeout, at most
        5 s): typically one to two polling intervals (1-2.5 s), never more than about 6 s
        plus the drop. A release that could not be measured is recorded as unknown (None).
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
                self._agent_checked = None  # probe the agent afresh next time
                await self._remember(hint_error=str(exc), hint_released=None,
                                     hint_at=time.time())
                return
            after = await self._next_sample(await self.stats(), STATS_REFRESH_WAIT)
        finally:
            if interval == 0 or interval > 2:
                await self.enable_stats(interval)
        released: int | None = None
        if after is not None and before.disk_caches is not None and after.disk_caches is not None:
            released = max(0, before.disk_caches - after.disk_caches)
        await self._remember(hint_released=released, hint_error=None, hint_at=time.time())

    # ---- snapshot and events ----------------------------------------------------------

    async def snapshot(self) -> BalloonState:
        """Everything about this VM's balloon in one ``BalloonState``. Never raises
        ``BalloonError``: failures become fields (``reachable``, ``error``, ``has_device``).
        """
        # The fields found so far: a failure part-way keeps them.
        found: dict[str, Any] = {"name": self.name, "qmp": self.address,
                                 "target": self.last_target()}
        try:
            await self.connect()
        except BalloonError as exc:
            return _failed(found, exc, reachable=False)
        try:
            # First, so that what an earlier connection to this run learned is used.
            await self.instance_id()
            ram = await self.guest_ram()
            found.update(reachable=True, guest_ram=ram, floor=self.floor(ram), maximum=self.maximum)
            actual = found["actual"] = await self.query_actual()
            found["target"] = await self.current_target(actual=actual, guest_ram=ram)
            await self.device_path()  # once, not by both reads below
            found["stats"], found["polling_interval"] = await asyncio.gather(
                self.stats(), self.polling_interval())
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


def _failed(found: dict[str, Any], exc: BalloonError, *, reachable: bool,
            **more: Any) -> BalloonState:
    return BalloonState(**{**found, **more, "reachable": reachable, "error": exc.message,
                           "error_kind": type(exc).__name__, "taken_at": time.time()})

