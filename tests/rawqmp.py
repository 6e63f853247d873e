"""A minimal raw QMP/QGA client over asyncio streams, for tests and as the benchmark baseline.

It does exactly what the wire needs and nothing else: read newline-terminated JSON
messages, send compact JSON without a trailing newline (like qemu.qmp), match replies by
``id`` and keep events in a list. Every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import collections
import json
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["RawQMP", "RawQMPError", "poll_until"]


class RawQMPError(Exception):
    """The server answered with an error: ``error_class`` and ``desc`` as QEMU sent them."""

    def __init__(self, error: dict[str, Any], reply: dict[str, Any]) -> None:
        super().__init__(f"{error.get('class')}: {error.get('desc')}")
        self.error_class: str = error.get("class", "")
        self.desc: str = error.get("desc", "")
        self.reply = reply


class RawQMP:
    """``await RawQMP.connect(path)``, then ``await greeting()`` / ``negotiate()`` /
    ``execute()``. For the guest agent use ``connect(path)`` and ``execute`` directly."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        # Events that arrived while waiting for replies (the newest 1000).
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=1000)
        self._next_id = 0

    @classmethod
    async def connect(cls, path: str | Path, *, reply_timeout: float = 5.0) -> RawQMP:
        """Open the unix socket (does not wait for a greeting). Every later read waits at
        most ``reply_timeout`` seconds; wrap a call in ``asyncio.timeout`` to wait less.

        Raises:
            OSError: FileNotFoundError, ConnectionRefusedError...
            TimeoutError: the connect did not finish in time.
        """
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(str(path)), reply_timeout
        )
        return cls(reader, writer, reply_timeout)

    @classmethod
    async def open(cls, path: str | Path, *, reply_timeout: float = 5.0) -> RawQMP:
        """Connect, read the greeting and negotiate capabilities: ready for commands."""
        client = await cls.connect(path, reply_timeout=reply_timeout)
        try:
            await client.greeting()
            await client.negotiate()
        except BaseException:
            await client.close()
            raise
        return client

    async def recv(self) -> dict[str, Any]:
        """The next message, event or not.

        Raises:
            TimeoutError: nothing arrived in time.
            EOFError: the server closed the connection.
            ValueError: the line is not JSON.
        """
        line = await asyncio.wait_for(self.reader.readline(), self.timeout)
        if not line:
            raise EOFError("server closed the connection")
        msg: dict[str, Any] = json.loads(line)
        return msg

    async def greeting(self) -> dict[str, Any]:
        """Read the ``{"QMP": ...}`` greeting.

        Raises: as ``recv``; AssertionError: the first message is no greeting.
        """
        msg = await self.recv()
        assert "QMP" in msg, msg
        return msg

    async def negotiate(self) -> None:
        await self.execute("qmp_capabilities")

    def send(self, msg: dict[str, Any] | bytes) -> None:
        """Write one message as compact JSON without a newline (or raw bytes)."""
        data = msg if isinstance(msg, bytes) else json.dumps(msg, separators=(",", ":")).encode()
        self.writer.write(data)

    async def request(self, cmd: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send a command with a fresh string id and return its whole reply (events that
        arrive first go to ``events``).

        Raises: as ``recv``.
        """
        self._next_id += 1
        msg_id = f"raw-{self._next_id}"
        msg: dict[str, Any] = {"execute": cmd, "id": msg_id}
        if arguments is not None:
            msg["arguments"] = arguments
        self.send(msg)
        await self.writer.drain()
        while True:
            reply = await self.recv()
            if "event" in reply:
                self.events.append(reply)
                continue
            return reply

    async def execute(self, cmd: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run a command and return its ``return`` value.

        Raises:
            RawQMPError: the server answered with an error.
            AssertionError: the reply did not echo our id.
        """
        reply = await self.request(cmd, arguments)
        assert reply.get("id") == f"raw-{self._next_id}", reply
        if "error" in reply:
            raise RawQMPError(reply["error"], reply)
        return reply["return"]

    async def next_event(self, name: str) -> dict[str, Any]:
        """Wait for the next event called ``name`` (already received ones first).

        Raises: as ``recv``.
        """
        for ev in self.events:
            if ev["event"] == name:
                self.events.remove(ev)
                return ev
        while True:
            msg = await self.recv()
            if msg.get("event") == name:
                return msg
            if "event" in msg:
                self.events.append(msg)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass

    async def __aenter__(self) -> RawQMP:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def poll_until(
    predicate: Any, *, within: float = 5.0, interval: float = 0.01, what: str = "condition"
) -> Any:
    """Call ``predicate()`` (sync or async) until it returns something truthy; return that.

    Raises:
        TimeoutError: still false after ``within`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise TimeoutError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(interval)
