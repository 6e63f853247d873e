"""A small client for the QEMU guest agent (qemu-ga), used by the cache-first hint.

The agent speaks line-delimited JSON on its own socket: no greeting, no capabilities, no
command ids. A stale reply from an earlier, abandoned client can sit in the channel, so
every session starts with ``guest-sync`` and a random id, discarding lines until the
matching reply. Commands then run one at a time. Every wait has a timeout.

Failures are translated once, in ``_translate``, into ``AgentError`` (or
``AgentExecBlocked`` when the agent refuses ``guest-exec``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from balloonctl.errors import AgentError, AgentExecBlocked

__all__ = ["DROP_CACHES", "ExecResult", "QgaClient"]

# Clean, unmapped page cache only (1 = pagecache); sync first so dirty pages become clean.
DROP_CACHES: Final = "sync; echo 1 > /proc/sys/vm/drop_caches"

_EXEC_POLL: Final = 0.05
_BLOCKED_HINT: Final = (
    "allow it in the guest's qemu-ga configuration (remove guest-exec from block-rpcs, or add "
    "it to allow-rpcs)"
)


@dataclass(frozen=True, slots=True)
class ExecResult:
    """What a ``guest-exec`` process left behind."""

    exitcode: int
    stdout: bytes
    stderr: bytes


class _AgentFailure(Exception):
    """An error reply from the agent, before translation."""

    def __init__(self, error_class: str, desc: str) -> None:
        super().__init__(desc)
        self.error_class = error_class
        self.desc = desc


def _translate(exc: Exception, *, path: str, cmd: str, timeout: float,
               vm: str | None) -> AgentError:
    """Turn an OS / asyncio / agent failure into an AgentError. The only such place."""
    if isinstance(exc, _AgentFailure):
        blocked = cmd.startswith("guest-exec") and (
            exc.error_class == "CommandNotFound" or "disabled" in exc.desc)
        if blocked:
            return AgentExecBlocked(
                f"the guest agent at {path} refuses {cmd} ({exc.desc}): {_BLOCKED_HINT}", vm=vm)
        return AgentError(f"guest agent {cmd} failed: {exc.desc}", vm=vm)
    if isinstance(exc, TimeoutError):
        return AgentError(f"guest agent at {path} did not answer {cmd} within {timeout:g}s "
                          "(is qemu-ga running in the guest?)", vm=vm)
    if isinstance(exc, FileNotFoundError):
        return AgentError(f"cannot connect to guest agent socket {path}: no such socket", vm=vm)
    if isinstance(exc, ConnectionRefusedError):
        return AgentError(f"cannot connect to guest agent socket {path}: connection refused",
                          vm=vm)
    if isinstance(exc, EOFError | ConnectionError):
        return AgentError(f"guest agent at {path} closed the connection during {cmd}", vm=vm)
    if isinstance(exc, ValueError):  # JSON that does not parse, or a reply of the wrong shape
        return AgentError(f"guest agent at {path} sent a bad reply to {cmd}: {exc}", vm=vm)
    return AgentError(f"guest agent {cmd} at {path} failed: {exc}", vm=vm)


class QgaClient:
    """One session with a guest agent socket. Use ``async with QgaClient(path) as ga:``.

    ``timeout`` bounds the connection and every reply; ``trace(name, direction, message)``
    sees every message (direction ``"->"`` to the agent, ``"<-"`` from it).
    """

    def __init__(self, path: str, *, timeout: float = 5.0,
                 trace: Callable[[str, str, Any], None] | None = None,
                 name: str | None = None, vm: str | None = None) -> None:
        self.path = path
        self.timeout = timeout
        self.trace = trace
        self.name = name or path
        self.vm = vm
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> QgaClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._writer is not None

    async def connect(self) -> None:
        """Open the socket and synchronise with the agent.

        Raises:
            AgentError: the socket is missing or refuses, or the agent does not answer.
        """
        if self._writer is not None:
            return
        try:
            async with asyncio.timeout(self.timeout):
                self._reader, self._writer = await asyncio.open_unix_connection(
                    self.path, limit=16 * 1024 * 1024)
        except Exception as exc:
            raise _translate(exc, path=self.path, cmd="connect", timeout=self.timeout,
                             vm=self.vm) from exc
        try:
            await self.sync()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the socket (never raises)."""
        writer, self._writer, self._reader = self._writer, None, None
        if writer is None:
            return
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass

    def _send(self, msg: dict[str, Any]) -> None:
        assert self._writer is not None
        if self.trace is not None:
            self.trace(self.name, "->", msg)
        self._writer.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")

    async def _recv(self) -> Any:
        assert self._reader is not None
        line = await self._reader.readline()
        if not line:
            raise EOFError
        msg = json.loads(line)
        if self.trace is not None:
            self.trace(self.name, "<-", msg)
        return msg

    async def sync(self) -> None:
        """``guest-sync`` with a random id; discards stale lines until the matching reply.

        Raises:
            AgentError: no matching reply within the timeout.
        """
        token = random.randrange(1, 2**31)
        try:
            async with self._lock, asyncio.timeout(self.timeout):
                # 0xFF resets qemu-ga's JSON parser in case an earlier client left half a
                # command in it; whatever it answers to that is discarded below.
                assert self._writer is not None
                self._writer.write(b"\xff")
                self._send({"execute": "guest-sync", "arguments": {"id": token}})
                while True:
                    try:
                        reply = await self._recv()
                    except ValueError:
                        continue  # a partial or garbled leftover line
                    if isinstance(reply, dict) and reply.get("return") == token:
                        return
        except Exception as exc:
            raise _translate(exc, path=self.path, cmd="guest-sync", timeout=self.timeout,
                             vm=self.vm) from exc

    async def execute(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        """Run one agent command and return its ``return`` value. Connects when needed.

        Raises:
            AgentError: the agent is unreachable, timed out, or answered with an error.
            AgentExecBlocked: a guest-exec command the agent refuses.
        """
        await self.connect()
        msg: dict[str, Any] = {"execute": cmd}
        if args is not None:
            msg["arguments"] = args
        try:
            async with self._lock, asyncio.timeout(self.timeout):
                self._send(msg)
                reply = await self._recv()
            if not isinstance(reply, dict):
                raise ValueError(f"not a JSON object: {reply!r}")
            if "error" in reply:
                err = reply["error"] or {}
                raise _AgentFailure(str(err.get("class", "GenericError")),
                                    str(err.get("desc", "")))
            if "return" not in reply:
                raise ValueError(f"no 'return' in {reply!r}")
            return reply["return"]
        except Exception as exc:
            if not isinstance(exc, _AgentFailure):
                await self.close()  # the stream is out of step; the next call resyncs
            raise _translate(exc, path=self.path, cmd=cmd, timeout=self.timeout,
                             vm=self.vm) from exc

    async def ping(self) -> None:
        """``guest-ping``.

        Raises:
            AgentError: the agent did not answer.
        """
        await self.execute("guest-ping")

    async def info(self) -> dict[str, Any]:
        """``guest-info``: the agent version and its commands (with ``enabled`` flags).

        Raises:
            AgentError: the agent did not answer.
        """
        result = await self.execute("guest-info")
        return dict(result) if isinstance(result, dict) else {}

    async def require_exec(self) -> None:
        """Check that the agent allows guest-exec (from ``guest-info``).

        Raises:
            AgentExecBlocked: guest-exec is disabled or absent.
            AgentError: the agent did not answer.
        """
        try:
            info = await self.info()
        except AgentError as exc:
            if "CommandNotFound" in str(exc) or "not found" in str(exc):
                await self.ping()  # an agent without guest-info: assume exec is allowed
                return
            raise
        commands = {c.get("name"): c for c in info.get("supported_commands", [])
                    if isinstance(c, dict)}
        for cmd in ("guest-exec", "guest-exec-status"):
            entry = commands.get(cmd)
            if commands and (entry is None or entry.get("enabled") is False):
                raise AgentExecBlocked(
                    f"the guest agent at {self.path} has {cmd} disabled: {_BLOCKED_HINT}",
                    vm=self.vm)

    async def exec(self, path: str, args: list[str] | None = None, *,
                   timeout: float | None = None,  # noqa: ASYNC109 - the contract's API
                   ) -> ExecResult:
        """Run a program in the guest and wait for it (``guest-exec`` + ``guest-exec-status``).

        ``timeout`` (default: the agent timeout) bounds the wait for the process to exit.

        Raises:
            AgentExecBlocked: the agent refuses guest-exec.
            AgentError: the agent failed, or the process did not exit in time.
        """
        limit = self.timeout if timeout is None else timeout
        pid = await self.exec_start(path, args)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while True:
            result = await self.exec_status(pid)
            if result is not None:
                return result
            if loop.time() >= deadline:
                raise AgentError(f"guest process {path} (pid {pid}) did not exit within "
                                 f"{limit:g}s", vm=self.vm)
            await asyncio.sleep(_EXEC_POLL)

    async def exec_start(self, path: str, args: list[str] | None = None) -> int:
        """Start a program in the guest with its output captured (``guest-exec``); return
        its pid for ``exec_status``.

        Raises:
            AgentExecBlocked: the agent refuses guest-exec.
            AgentError: the agent failed or sent a reply of the wrong shape.
        """
        started = await self.execute("guest-exec", {"path": path, "arg": list(args or []),
                                                    "capture-output": True})
        pid = started.get("pid") if isinstance(started, dict) else None
        if not isinstance(pid, int) or isinstance(pid, bool):
            raise AgentError(f"guest agent at {self.path} sent a bad reply to guest-exec: "
                             f"{started!r:.100}", vm=self.vm)
        return pid

    async def exec_status(self, pid: int) -> ExecResult | None:
        """What a process started by ``exec_start`` left behind (``guest-exec-status``), or
        None while it runs.

        Raises:
            AgentError: the agent failed or sent a reply of the wrong shape.
        """
        status = await self.execute("guest-exec-status", {"pid": pid})
        try:
            if not status.get("exited"):
                return None
            code = status.get("exitcode")  # absent when a signal killed it
            return ExecResult(
                exitcode=code if isinstance(code, int) else -1,
                stdout=base64.b64decode(status.get("out-data", ""), validate=True),
                stderr=base64.b64decode(status.get("err-data", ""), validate=True),
            )
        except (AttributeError, TypeError, ValueError) as exc:
            raise AgentError(f"guest agent at {self.path} sent a bad reply to "
                             f"guest-exec-status: {status!r:.100}", vm=self.vm) from exc

    async def drop_caches(self) -> ExecResult:
        """Have the guest drop clean page cache: ``sync; echo 1 > /proc/sys/vm/drop_caches``.

        Raises:
            AgentExecBlocked: the agent refuses guest-exec.
            AgentError: the agent failed or the command exited non-zero.
        """
        result = await self.exec("/bin/sh", ["-c", DROP_CACHES], timeout=max(self.timeout, 30.0))
        if result.exitcode != 0:
            err = result.stderr.decode(errors="replace").strip() or f"exit {result.exitcode}"
            raise AgentError(f"dropping the guest's page cache failed: {err}", vm=self.vm)
        return result
