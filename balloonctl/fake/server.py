"""A unix-socket JSON command server that serves one client at a time, as QEMU's chardev
sockets do: a second client's ``connect()`` succeeds, but it is not served (no greeting,
no replies) until the first one disconnects.

The QMP monitor and the guest agent both build on this; fault injection happens here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from balloonctl.fake.faults import GARBAGE, FaultAction, Faults
from balloonctl.fake.wire import JSONStream, ParseError, QMPError, encode

__all__ = ["JSONServer", "SocketInUse"]

log = logging.getLogger(__name__)

_READ_SIZE = 65536
# How long a live server gets to accept the probe connection before its socket counts as stale.
_PROBE_TIMEOUT = 1.0


class SocketInUse(OSError):
    """Another process (a fake or QEMU) is serving the socket we were asked to listen on."""


def _socket_file(path: Path) -> bool:
    """True when ``path`` is a socket file, False when there is nothing there.

    Raises:
        OSError: it is some other kind of file (never replaced).
    """
    if not path.exists() and not path.is_symlink():
        return False
    if not path.is_socket():
        raise OSError(f"{path} exists and is not a socket; not replacing it")
    return True


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


async def _take_over(path: Path) -> None:
    """Remove ``path`` when it is a socket nobody listens on (left by a process that died).

    Raises:
        SocketInUse: a connection to it succeeds: someone is serving it.
        OSError: it exists and is not a socket.
    """
    if not _socket_file(path):
        return
    in_use = SocketInUse(f"{path} is in use (another fake or QEMU is serving it)")
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(str(path)), _PROBE_TIMEOUT)
    except (ConnectionRefusedError, FileNotFoundError):
        _remove(path)
        return
    except TimeoutError:  # listening, but too busy to accept: still someone's
        raise in_use from None
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    raise in_use


class JSONServer:
    """Serve JSON commands on ``path``. Subclasses implement ``command`` and may override
    ``on_session_start`` (greeting) and ``check_message``."""

    crlf = True  # QEMU's monitor writes \r\n, qemu-ga writes \n

    def __init__(self, path: Path, faults: Faults) -> None:
        self.path = path
        self.faults = faults
        self._server: asyncio.AbstractServer | None = None
        self._lock = asyncio.Lock()
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._current: asyncio.StreamWriter | None = None
        self._stopping = False
        self._close_after_reply: Callable[[], None] | None = None

    async def start(self) -> None:
        """Listen on ``path``. A stale socket file (nobody listening) is replaced; a live one
        or any other kind of file is left alone.

        Raises:
            SocketInUse: something already serves ``path``.
            OSError: ``path`` is not a socket, or the socket cannot be created.
        """
        await _take_over(self.path)
        self._stopping = False
        self._lock = asyncio.Lock()  # a fresh one: start() may run on a new event loop
        self._server = await asyncio.start_unix_server(self._accept, path=str(self.path))

    async def stop(self) -> None:
        """Stop listening, remove the socket file and drop every connection."""
        self._stopping = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        for writer in list(self._writers):
            writer.close()
        me = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not me]
        for task in tasks:
            task.cancel()  # a session may be sleeping in an injected delay
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        if server is not None:
            await server.wait_closed()

    def send(self, msg: Any) -> None:
        """Write one message to the client being served (if any)."""
        writer = self._current
        if writer is not None and not writer.is_closing():
            writer.write(encode(msg, crlf=self.crlf))

    # --- hooks -------------------------------------------------------------------------

    async def on_session_start(self, writer: asyncio.StreamWriter) -> bool:
        """Called when a client's turn begins. Return False to serve it nothing."""
        return True

    def on_session_end(self) -> None:
        """Called when the client being served goes away."""

    def command(self, name: str, args: dict[str, Any]) -> Any:
        """Run one command; return its ``return`` value.

        Raises:
            QMPError: the command fails.
        """
        raise QMPError(f"The command {name} has not been found", "CommandNotFound")

    @property
    def allow_oob(self) -> bool:
        """Whether ``exec-oob`` is accepted (QMP after negotiating the oob capability)."""
        return False

    def close_after_reply(self, then: Callable[[], None] = lambda: None) -> None:
        """Ask the session to call ``then`` once the current reply is written, and close."""
        self._close_after_reply = then

    # --- connection handling -----------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._writers.add(writer)
        try:
            async with self._lock:
                if self._stopping or writer.is_closing():
                    return
                self._current = writer
                try:
                    await self._session(reader, writer)
                finally:
                    self._current = None
                    self.on_session_end()
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            # stop() (or the end of asyncio.run) cancels the sessions. End the task quietly:
            # before Python 3.13 asyncio's client_connected_cb callback calls exception() on
            # a cancelled task, which raises and is logged with a traceback on stderr.
            pass
        except Exception:  # a bug in the fake must not kill the server
            log.exception("fake server %s: session failed", self.path)
        finally:
            self._writers.discard(writer)
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not await self.on_session_start(writer):
            while await reader.read(_READ_SIZE):
                pass
            return
        await writer.drain()
        stream = JSONStream()
        while True:
            data = await reader.read(_READ_SIZE)
            if not data:
                return
            for msg in stream.feed(data):
                if not await self._handle(msg, writer):
                    await writer.drain()
                    return
            await writer.drain()

    async def _handle(self, msg: Any, writer: asyncio.StreamWriter) -> bool:
        """Answer one message. Returns False when the connection must close."""
        if isinstance(msg, ParseError):
            self.send({"error": QMPError(f"JSON parse error, {msg.text}").to_wire()})
            return True
        try:
            name, args = self.check_message(msg)
        except QMPError as err:
            self._respond({"error": err.to_wire()}, msg)
            return True
        faults = self.faults
        if faults.delay:
            delay = faults.delay.get(name, 0.0)
            if delay > 0:
                await asyncio.sleep(delay)
        action = faults.action_for(name)
        if action is FaultAction.DROP:
            return False
        if action is FaultAction.GARBAGE:
            writer.write(GARBAGE)
            return True
        try:
            if action is FaultAction.ERROR:
                cls, desc = faults.errors[name]
                raise QMPError(desc, cls)
            result = self.command(name, args)
        except QMPError as err:
            self._respond({"error": err.to_wire()}, msg)
            return True
        self._respond({"return": result}, msg)
        then = self._close_after_reply
        if then is not None:
            self._close_after_reply = None
            then()
            return False
        return True

    def _respond(self, reply: dict[str, Any], msg: Any) -> None:
        """Send a reply, echoing the command's ``id`` (any JSON value) when it had one."""
        if isinstance(msg, dict) and "id" in msg:
            reply["id"] = msg["id"]
        self.send(reply)

    def check_message(self, msg: Any) -> tuple[str, dict[str, Any]]:
        """Validate a command message like QEMU's qmp_dispatch_check_obj.

        Raises:
            QMPError: the message is not a well-formed command.
        """
        if not isinstance(msg, dict):
            raise QMPError("QMP input must be a JSON object")
        name: Any = None
        exec_key = None
        for key, value in msg.items():
            if key == "execute" or (key == "exec-oob" and self.allow_oob):
                if not isinstance(value, str):
                    raise QMPError(f"QMP input member '{key}' must be a string")
                if exec_key is not None:
                    raise QMPError(f"QMP input member '{key}' clashes with '{exec_key}'")
                exec_key = key
                name = value
            elif key == "arguments":
                if not isinstance(value, dict):
                    raise QMPError("QMP input member 'arguments' must be an object")
            elif key != "id":
                raise QMPError(f"QMP input member '{key}' is unexpected")
        if name is None:
            raise QMPError("QMP input lacks member 'execute'")
        if exec_key == "exec-oob":
            # None of the fake's commands is allow-oob.
            raise QMPError(f"The command {name} does not support OOB")
        args: dict[str, Any] = msg.get("arguments", {})
        return name, args
