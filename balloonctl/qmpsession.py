"""One QMP session over a socket, on top of ``qemu.qmp.QMPClient``; ``BalloonClient`` is built
on it.

qemu.qmp supplies the transport (framing, ids, concurrent ``execute``). This module adds
what it lacks for balloonctl:

- timeouts on every wait (``connect_timeout`` covers the socket, the greeting and the
  capabilities negotiation; ``command_timeout`` covers each command; ``deadline``, when
  set, bounds them all together);
- a clear ``SocketBusy`` when QEMU accepts the connection but never greets, which is what a
  QMP socket does while another client (libvirt, a dashboard, qmp-shell) holds it, naming
  the holder where the host lets us see it (``balloonctl.sockpeer``); a QEMU that greets but
  never answers ``qmp_capabilities`` is a ``QMPTimeout`` saying so, not "busy";
- recovery after the peer drops: the in-flight call raises ``Disconnected`` and the next
  call reconnects;
- one translation of qemu.qmp's errors into ``balloonctl.errors`` (``_translate``);
- bounded event buffers (qemu.qmp's listeners keep every event forever).

It knows nothing about balloons: commands go through unchanged, replies come back raw.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
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
from qemu.qmp.qmp_client import GreetingError, NegotiationError

from balloonctl.deadline import Deadline
from balloonctl.errors import (
    BadReply,
    BalloonError,
    ConnectFailed,
    Disconnected,
    NoBalloonDevice,
    QMPCommandError,
    QMPTimeout,
    SocketBusy,
)
from balloonctl.replies import BalloonEvent, parse_event
from balloonctl.sockpeer import describe_holders, socket_holders

__all__ = [
    "EVENT_BUFFER",
    "NO_DEVICE_MESSAGE",
    "BalloonEvent",
    "BoundedEventListener",
    "QmpSession",
    "Trace",
    "parse_address",
    "socket_identity",
]

log = logging.getLogger(__name__)

Trace = Callable[[str, str, Any], None]
"""``trace(vm, direction, message)``: direction is ``"->"`` (to QEMU) or ``"<-"`` (from it)."""

NO_DEVICE_MESSAGE: Final = (
    "VM has no virtio-balloon device; start QEMU with -device virtio-balloon-pci,id=balloon0"
)
# Events kept per listener (queue) and in its history; older ones are dropped.
EVENT_BUFFER: Final = 256


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
    greeted: bool = False  # connect: QEMU sent its greeting before the timeout
    deadline: Deadline | None = None  # set when the overall deadline cut the wait short
    holders: str | None = None  # connect: who holds a busy socket (sockpeer), if visible
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
            if where.greeted:
                return QMPTimeout(
                    f"QEMU at {addr} greeted but did not answer qmp_capabilities within "
                    f"{where.timeout:g}s (QEMU is hung or overloaded; no other client holds "
                    "the socket)", vm=vm)
            if where.accepted:
                who = where.holders or (
                    "another QMP client (libvirt, a balloonctl dashboard or watch, qmp-shell)")
                return SocketBusy(
                    f"QMP socket {addr} accepted the connection but sent no greeting within "
                    f"{where.timeout:g}s: it is held by {who}", vm=vm)
            return SocketBusy(
                f"QMP socket {addr} did not accept the connection within {where.timeout:g}s: "
                "its listen queue is full (other QMP clients are waiting)", vm=vm)
        root: BaseException = exc.exc if isinstance(exc, ConnectError) else exc
        if isinstance(root, NegotiationError):
            return BadReply(f"QEMU at {addr} sent a bad reply to qmp_capabilities: "
                            f"{_describe_cause(root.exc)}", vm=vm,
                            sent={"execute": "qmp_capabilities"})
        if isinstance(root, GreetingError):
            return BadReply(f"QMP socket {addr} greeted with something that is not a QMP "
                            f"greeting: {_describe_cause(root.exc)}", vm=vm)
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
    if isinstance(exc, TimeoutError) and where.deadline is not None:
        return QMPTimeout(f"QEMU at {addr} did not answer {cmd} within "
                          f"{where.deadline.describe()}", vm=vm)
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


def parse_address(address: str) -> str | tuple[str, int]:
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


def socket_identity(path: str) -> str | None:
    """The unix socket file's identity; QEMU (and the fake) create the file anew at every
    start, so it names one run of the VM. None when the file is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"unix:{st.st_dev}:{st.st_ino}:{st.st_ctime_ns}"


class QmpSession:
    """One QMP connection to ``address`` (a unix socket path or ``host:port``), opened lazily
    and again on the call after a drop. ``name`` labels traces; ``vm`` is the VM name errors
    carry (None: they name none). ``on_connect`` runs after every successful connect, before
    the call that connected goes on.
    """

    def __init__(self, address: str, *, name: str, vm: str | None,
                 connect_timeout: float, command_timeout: float, trace: Trace | None,
                 on_connect: Callable[[], None] | None = None) -> None:
        self.address = address
        self.name = name
        self.vm = vm
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.trace = trace
        self.on_connect = on_connect
        # The overall limit of the operation under way (``Fleet`` sets it per call); every
        # wait is bounded by what is left of it, as well as by its own timeout.
        self.deadline: Deadline | None = None
        self.addr = parse_address(address)
        # The socket file this connection reached (QEMU re-creates it at every start); None
        # over TCP or when the file was gone.
        self.socket_id: str | None = None
        self._qmp = _Transport(name, trace)
        self._lock = asyncio.Lock()
        self._closes = 0  # close() calls so far: an event stream ended by close() is quiet

    @property
    def connected(self) -> bool:
        return self._qmp.runstate is Runstate.RUNNING

    @property
    def state(self) -> str:
        """qemu.qmp's runstate name (IDLE, CONNECTING, RUNNING, DISCONNECTING)."""
        return self._qmp.runstate.name

    async def connect(self) -> None:
        """Connect and negotiate, within ``connect_timeout``. No-op when connected.

        Raises:
            ConnectFailed: the socket is missing or refuses, or the handshake failed.
            SocketBusy: the socket accepted but sent no greeting in time (another client).
            QMPTimeout: it greeted but did not finish the negotiation in time (slow or hung).
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
        limit, cut = self._bound(self.connect_timeout)
        where = _Failure(self.address, self.vm, "connect", timeout=round(limit, 2))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        sock: socket.socket | None = None
        try:
            async with asyncio.timeout_at(deadline):
                sock = await self._open_socket()
                where.accepted = True
                await self._qmp.connect(sock)
        except Exception as exc:
            if cut and isinstance(exc, TimeoutError) and not where.accepted:
                assert self.deadline is not None
                raise QMPTimeout(f"QMP socket {self.address} did not accept the connection "
                                 f"within {self.deadline.describe()}", vm=self.vm) from exc
            if isinstance(exc, TimeoutError) and where.accepted:
                where.greeted = self._qmp.greeting is not None
                if not where.greeted and isinstance(self.addr, str):
                    where.holders = describe_holders(socket_holders(self.addr, mine=sock))
            if self._qmp.runstate is not Runstate.IDLE:
                # e.g. qemu.qmp's bare AssertionError after a peer that negotiated and left
                await self._reap()
            if not _idle(self._qmp):
                self._qmp = _Transport(self.name, self.trace)
            if sock is not None:
                sock.close()  # qemu.qmp closed its stream already; this is a no-op then
            raise _translate(exc, where) or ConnectFailed(
                f"cannot connect to QMP socket {self.address}: {exc!r}", vm=self.vm) from exc
        self.socket_id = None if isinstance(self.addr, tuple) else socket_identity(self.addr)
        if self.on_connect is not None:
            self.on_connect()

    def _bound(self, timeout: float) -> tuple[float, bool]:
        """``timeout`` cut to what is left of ``deadline``; whether the deadline limits it."""
        if self.deadline is None:
            return timeout, False
        return self.deadline.bound(timeout)

    async def _open_socket(self) -> socket.socket:
        # The socket is opened here rather than by qemu.qmp so that a timeout can tell
        # "not accepting" from "accepted but silent" (the busy case).
        loop = asyncio.get_running_loop()
        addr = self.addr
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
        limit, cut = self._bound(self.command_timeout)
        try:
            async with asyncio.timeout(limit):
                return await qmp.execute(cmd, args)
        except Exception as exc:
            where = _Failure(self.address, self.vm, cmd, args, timeout=limit,
                             deadline=self.deadline if cut else None)
            if isinstance(exc, ExecInterruptedError | StateError):
                async with self._lock:
                    if qmp is self._qmp and qmp.runstate is not Runstate.RUNNING:
                        where.cause = await self._reap()
            translated = _translate(exc, where)
            if translated is None:
                raise
            raise translated from exc

    async def events(self) -> AsyncIterator[BalloonEvent]:
        """QMP events as they arrive; see ``BalloonClient.events``.

        Raises:
            Disconnected: the connection dropped (the next call reconnects).
            ConnectFailed, SocketBusy: connecting failed.
            BadReply: an event of the wrong shape (the stream ends there).
        """
        await self.connect()
        qmp = self._qmp
        closes = self._closes
        listener = BoundedEventListener()
        qmp.register_listener(listener)
        try:
            while True:
                if not listener.empty():
                    yield parse_event(await listener.get(), vm=self.vm)
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
                    yield parse_event(getter.result(), vm=self.vm)
        finally:
            qmp.remove_listener(listener)
        if self._closes != closes:
            return  # close() ended it
        cause: BaseException | None = None
        async with self._lock:
            if qmp is self._qmp and qmp.runstate is Runstate.DISCONNECTING:
                cause = await self._reap()
        raise Disconnected(f"QMP connection to {self.address} closed: "
                           f"{_describe_cause(cause)}", vm=self.vm)
