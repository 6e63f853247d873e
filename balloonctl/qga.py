"""A small client for the QEMU guest agent (qemu-ga), used by the cache-first hint.

The agent speaks line-delimited JSON on its own socket: no greeting, no capabilities, no
command ids. A stale reply from an earlier, abandoned client can sit in the channel, so
every session starts with ``guest-sync`` and a random id, discarding lines until the
matching reply. Commands then run one at a time. Every wait has a timeout.

Failures are translated once, in ``_translate``, into ``AgentError`` (or
``AgentExecBlocked`` when the agent refuses ``guest-exec``, ``BadAgentReply`` for a reply
that is not JSON); replies are parsed in ``balloonctl.replies`` (``BadAgentReply``).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from balloonctl.errors import AgentError, AgentExecBlocked, BadAgentReply
from balloonctl.replies import (
    ErrorReply,
    GuestInfo,
    describe,
    empty,
    envelope,
    exec_pid,
    exec_status,
    guest_info,
    parse_qga,
    sync_id,
)
from balloonctl.text import escape_text

__all__ = ["DROP_CACHES", "EXEC_POLL_FIRST", "EXEC_POLL_MAX", "ExecResult", "QgaClient"]

T = TypeVar("T")

# Clean, unmapped page cache only (1 = pagecache); sync first so dirty pages become clean.
DROP_CACHES: Final = "sync; echo 1 > /proc/sys/vm/drop_caches"

# guest-exec-status polling (exec_wait): first look, then doubling up to the most.
EXEC_POLL_FIRST: Final = 0.01
EXEC_POLL_MAX: Final = 0.1
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
                f"the guest agent at {path} refuses {cmd} ({escape_text(exc.desc)}): "
                f"{_BLOCKED_HINT}", vm=vm, error_class=exc.error_class)
        return AgentError(f"guest agent {cmd} failed: {escape_text(exc.desc)}", vm=vm,
                          error_class=exc.error_class)
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
    if isinstance(exc, ValueError):  # JSON that does not parse (or not UTF-8)
        return BadAgentReply(f"guest agent at {escape_text(path)} sent a bad reply to {cmd}: "
                             f"{exc}", vm=vm, sent={"execute": cmd})
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
        await self._open()
        try:
            await self.sync()
        except BaseException:
            await self.close()
            raise

    async def _open(self) -> None:
        """Open the socket (no handshake). Raises: AgentError."""
        try:
            async with asyncio.timeout(self.timeout):
                self._reader, self._writer = await asyncio.open_unix_connection(
                    self.path, limit=16 * 1024 * 1024)
        except Exception as exc:
            raise _translate(exc, path=self.path, cmd="connect", timeout=self.timeout,
                             vm=self.vm) from exc

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
            AgentError: no matching reply within the timeout (the message shows the last
                line that did not match, if any).
        """
        async with self._lock:
            await self._sync_locked()

    async def _sync_locked(self, then: dict[str, Any] | None = None,
                           sent: Callable[[], None] | None = None) -> None:
        """``sync`` with the lock held; ``then`` (a command) goes out in the same write,
        right behind ``guest-sync`` (the agent answers in order, so its reply is the next
        line after the sync's), and ``sent()`` is called once it is written."""
        token = random.randrange(1, 2**31)
        last: list[Any] = []
        try:
            async with asyncio.timeout(self.timeout):
                # 0xFF resets qemu-ga's JSON parser in case an earlier client left half a
                # command in it; whatever it answers to that is discarded below.
                assert self._writer is not None
                self._writer.write(b"\xff")
                self._send({"execute": "guest-sync", "arguments": {"id": token}})
                if then is not None:
                    self._send(then)
                    if sent is not None:
                        sent()
                while True:
                    try:
                        reply = await self._recv()
                    except ValueError:
                        continue  # a partial or garbled leftover line
                    if sync_id(reply) == token:
                        return
                    last[:] = [reply]
        except Exception as exc:
            error = _translate(exc, path=self.path, cmd="guest-sync", timeout=self.timeout,
                               vm=self.vm)
            if last and isinstance(exc, TimeoutError):
                error = BadAgentReply(
                    f"{error.message}; the last line was not the reply to guest-sync id "
                    f"{token}: {describe(last[0])}", vm=self.vm,
                    sent={"execute": "guest-sync", "arguments": {"id": token}},
                    received=last[0])
            raise error from exc

    async def execute(self, cmd: str, args: dict[str, Any] | None = None, *,
                      sent: Callable[[], None] | None = None) -> Any:
        """Run one agent command and return its ``return`` value, unparsed (``query``
        parses it). Connects when needed: then the command goes out in the same write as
        the ``guest-sync`` handshake, not one round trip later. ``sent()`` is called once
        the command is written, before any reply is awaited.

        Raises:
            AgentError: the agent is unreachable, timed out, or answered with an error.
            AgentExecBlocked: a guest-exec command the agent refuses.
            BadAgentReply: the reply is not JSON, or neither a return nor a well-formed error.
        """
        msg: dict[str, Any] = {"execute": cmd}
        if args is not None:
            msg["arguments"] = args
        fresh = self._writer is None
        if fresh:
            await self._open()
        async with self._lock:
            if fresh:
                try:
                    await self._sync_locked(then=msg, sent=sent)
                except BaseException:
                    await self.close()
                    raise
            try:
                async with asyncio.timeout(self.timeout):
                    if not fresh:
                        self._send(msg)
                        if sent is not None:
                            sent()
                    reply = await self._recv()
            except Exception as exc:
                await self.close()  # the stream is out of step; the next call resyncs
                raise _translate(exc, path=self.path, cmd=cmd, timeout=self.timeout,
                                 vm=self.vm) from exc
        try:
            result = parse_qga(envelope, reply, cmd=cmd, args=args, vm=self.vm, path=self.path)
        except BadAgentReply:
            await self.close()
            raise
        if isinstance(result, ErrorReply):
            failure = _AgentFailure(result.error_class, result.desc)
            raise _translate(failure, path=self.path, cmd=cmd, timeout=self.timeout,
                             vm=self.vm) from failure
        return result.value

    async def query(self, cmd: str, args: dict[str, Any] | None,
                    parse: Callable[[Any], T], *,
                    sent: Callable[[], None] | None = None) -> T:
        """Run one agent command and parse its ``return`` value with ``parse`` (a
        ``balloonctl.replies`` parser); ``sent`` as for ``execute``.

        Raises:
            BadAgentReply: the reply has the wrong shape; and what ``execute`` raises.
        """
        value = await self.execute(cmd, args, sent=sent)
        return parse_qga(parse, value, cmd=cmd, args=args, vm=self.vm, path=self.path)

    async def ping(self) -> None:
        """``guest-ping``.

        Raises:
            AgentError: the agent did not answer.
        """
        await self.query("guest-ping", None, empty)

    async def info(self) -> GuestInfo:
        """``guest-info``: the agent version and its commands (with ``enabled`` flags).

        Raises:
            AgentError: the agent did not answer.
            BadAgentReply: the reply has the wrong shape.
        """
        return await self.query("guest-info", None, guest_info)

    async def require_exec(self) -> None:
        """Check that the agent allows guest-exec (from ``guest-info``).

        Raises:
            AgentExecBlocked: guest-exec is disabled or absent.
            BadAgentReply: guest-info's reply has the wrong shape.
            AgentError: the agent did not answer.
        """
        try:
            info = await self.info()
        except BadAgentReply:
            raise
        except AgentError as exc:
            if exc.error_class == "CommandNotFound":
                await self.ping()  # an agent without guest-info: assume exec is allowed
                return
            raise
        commands = info.commands
        for cmd in ("guest-exec", "guest-exec-status"):
            if commands and not commands.get(cmd, False):
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
            BadAgentReply: guest-exec or guest-exec-status answered with the wrong shape.
            AgentError: the agent failed, or the process did not exit in time.
        """
        limit = self.timeout if timeout is None else timeout
        pid = await self.exec_start(path, args)
        try:
            async with asyncio.timeout(limit):
                return await self.exec_wait(pid)
        except TimeoutError:
            raise AgentError(f"guest process {path} (pid {pid}) did not exit within "
                             f"{limit:g}s", vm=self.vm) from None

    async def exec_wait(self, pid: int) -> ExecResult:
        """Poll ``exec_status`` until the process exits (no limit of its own: wrap it in a
        timeout). The first look is after ``EXEC_POLL_FIRST``, each wait then doubles up to
        ``EXEC_POLL_MAX``: a short script is seen to end soon after it does, and a long one
        costs the guest (whose agent answers every poll) few wake-ups.

        Raises:
            BadAgentReply: guest-exec-status answered with the wrong shape.
            AgentError: the agent failed.
        """
        wait = EXEC_POLL_FIRST
        while True:
            await asyncio.sleep(wait)
            result = await self.exec_status(pid)
            if result is not None:
                return result
            wait = min(wait * 2, EXEC_POLL_MAX)

    async def exec_start(self, path: str, args: list[str] | None = None, *,
                         sent: Callable[[], None] | None = None) -> int:
        """Start a program in the guest with its output captured (``guest-exec``); return
        its pid for ``exec_status``. ``sent()`` is called as soon as the request is written
        (on a new session, in the same write as the handshake), before the agent answers.

        Raises:
            AgentExecBlocked: the agent refuses guest-exec.
            BadAgentReply: the reply has the wrong shape.
            AgentError: the agent failed.
        """
        return await self.query("guest-exec", {"path": path, "arg": list(args or []),
                                               "capture-output": True}, exec_pid,
                               sent=sent)

    async def exec_status(self, pid: int) -> ExecResult | None:
        """What a process started by ``exec_start`` left behind (``guest-exec-status``), or
        None while it runs.

        Raises:
            BadAgentReply: the reply has the wrong shape.
            AgentError: the agent failed.
        """
        status = await self.query("guest-exec-status", {"pid": pid}, exec_status)
        if not status.exited:
            return None
        return ExecResult(
            # exitcode is absent when a signal killed the process
            exitcode=-1 if status.exitcode is None else status.exitcode,
            stdout=status.stdout, stderr=status.stderr)

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
