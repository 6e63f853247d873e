"""The guest agent (qemu-ga) socket: line-delimited JSON, no greeting, no negotiation.

``guest-exec`` runs a tiny simulated shell against the guest simulation: ``sync``,
``echo 1 > /proc/sys/vm/drop_caches`` (or 3; also via ``tee`` with ``input-data``),
``cat /proc/meminfo``, ``true``, ``false`` and ``echo``. Anything else exits 127.

balloonctl's cache-reclaim script (``sh -c SCRIPT balloonctl-reclaim N MOUNT``, recognised
by its ``$0``) is not interpreted: its effect is emulated on a guest kernel like Debian 12's
6.1 (``GuestKernel``): the root cgroup's ``memory.reclaim`` rejects ``swappiness=`` with
EINVAL and answers EAGAIN when it reclaimed less than asked; the kernel may lack
``memory.reclaim`` (older than 5.19) and the guest may not have cgroup2 mounted.
"""

from __future__ import annotations

import base64
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from balloonctl.fake.faults import Faults
from balloonctl.fake.guest import GuestSim
from balloonctl.fake.server import JSONServer
from balloonctl.fake.wire import QMPError, check_args
from balloonctl.reclaim import RECLAIM_MARKER
from balloonctl.units import MiB

__all__ = ["QGA_VERSION", "AgentServer", "GuestKernel", "run_command"]

QGA_VERSION = "7.2.22"

_SHELLS = frozenset({"sh", "bash", "dash"})
_DROP_RE = re.compile(r"(?:echo|printf)\s+['\"]?([0-9])['\"]?[^;&]*drop_caches")
# The reclaim script asks a kernel without swappiness=0 for the file pages less this.
_FILE_MARGIN = 16 * MiB
_SPLIT_RE = re.compile(r"\s*(?:;|&&|\|\||\n)\s*")


@dataclass
class GuestKernel:
    """What the guest's kernel and mounts offer the cache-reclaim script.

    ``memory_reclaim``: the root cgroup has ``memory.reclaim`` (Linux 5.19+);
    ``cgroup2_mounted``: cgroup2 is mounted at /sys/fs/cgroup (a mount makes it so);
    ``swappiness_key``: ``memory.reclaim`` takes ``swappiness=0`` (newer than 6.1).
    """

    memory_reclaim: bool = True
    cgroup2_mounted: bool = True
    swappiness_key: bool = False


def _reclaim_script(args: list[str], guest: GuestSim, kernel: GuestKernel,
                    ) -> tuple[int, bytes, bytes]:
    """The effect and output of balloonctl's cache-reclaim script (args after ``-c``)."""
    try:
        n, may_mount = int(args[2]), args[3] == "1"
    except (IndexError, ValueError):
        return 2, b"", b"sh: 1: [: Illegal number\n"

    def mem(when: str) -> list[str]:
        return [f"{when}_free={guest.free // 1024}", f"{when}_buffers=0",
                f"{when}_cached={guest.cache // 1024}"]

    lines = ["balloonctl-reclaim=1", *mem("before")]
    mounted = False
    if not kernel.cgroup2_mounted and may_mount:
        kernel.cgroup2_mounted = mounted = True
    method, why, result = "drop", "", "ok"
    if not kernel.cgroup2_mounted:
        why = "no-cgroup2"
    elif not kernel.memory_reclaim:
        why = "no-memory-reclaim"
    else:
        method = "reclaim"
        why = "file-pages" if kernel.swappiness_key else "no-swappiness-key"
    if method == "reclaim" and not kernel.swappiness_key and n > guest.cache - _FILE_MARGIN:
        n, result = guest.cache - _FILE_MARGIN, "short"  # the script's cap: file pages only
    if n > 0:
        if method == "reclaim":
            if guest.reclaim(n, swap=not kernel.swappiness_key) < n:
                result = "short"  # the write failed with EAGAIN
        else:
            guest.drop_caches()
    lines += mem("after")
    lines += [f"method={method}", f"why={why}", f"mounted={int(mounted)}", f"result={result}"]
    return 0, ("\n".join(lines) + "\n").encode(), b""


def _failed(reason: str) -> QMPError:
    return QMPError(f"Guest agent command failed, error was '{reason}'")


@dataclass
class _Process:
    exitcode: int
    out: bytes
    err: bytes
    capture: bool
    done_at: float


def _drop_value(cmdline: str, input_data: bytes) -> int | None:
    """The number a command line writes to /proc/sys/vm/drop_caches, if it does."""
    if "drop_caches" not in cmdline:
        return None
    m = _DROP_RE.search(cmdline)
    if m is not None:
        return int(m.group(1))
    text = input_data.decode(errors="replace").strip()
    if text.isdigit():
        return int(text)
    return None


def _simple(argv: list[str], guest: GuestSim) -> tuple[int, bytes, bytes]:
    prog = argv[0].rsplit("/", 1)[-1]
    if prog in ("true", "sync", ":"):
        return 0, b"", b""
    if prog == "false":
        return 1, b"", b""
    if prog == "echo":
        return 0, (" ".join(argv[1:]) + "\n").encode(), b""
    if prog == "cat":
        out = b""
        for name in argv[1:]:
            if name != "/proc/meminfo":
                return 1, out, f"cat: {name}: No such file or directory\n".encode()
            out += guest.meminfo().encode()
        return 0, out, b""
    return 127, b"", f"sh: 1: {argv[0]}: not found\n".encode()


def run_command(
    path: str, args: list[str], guest: GuestSim, input_data: bytes = b"",
    kernel: GuestKernel | None = None,
) -> tuple[int, bytes, bytes]:
    """Run a command line in the simulated guest: ``(exitcode, stdout, stderr)``."""
    prog = path.rsplit("/", 1)[-1]
    if prog in _SHELLS and args[:1] == ["-c"] and args[2:3] == [RECLAIM_MARKER]:
        return _reclaim_script(args[1:], guest, kernel or GuestKernel())
    argv = [path, *args]
    cmdline = " ".join(argv)
    value = _drop_value(cmdline, input_data)
    if value is not None:
        if value in (1, 3):
            guest.drop_caches()
        elif value != 2:
            return 1, b"", b"sh: 1: echo: echo: I/O error\n"
        return 0, b"", b""
    if prog in _SHELLS:
        if len(args) < 2 or args[0] != "-c":
            return 2, b"", f"{prog}: unsupported invocation in the fake guest\n".encode()
        out = b""
        err = b""
        code = 0
        for part in _SPLIT_RE.split(args[1].strip()):
            if not part:
                continue
            try:
                words = shlex.split(part)
            except ValueError:
                return 2, out, b"sh: 1: Syntax error: Unterminated quoted string\n"
            if not words:
                continue
            code, o, e = _simple(words, guest)
            out += o
            err += e
        return code, out, err
    return _simple(argv, guest)


class AgentServer(JSONServer):
    """One VM's guest-agent socket (``-chardev socket,...,server=on`` behind virtserialport)."""

    crlf = False

    def __init__(
        self,
        path: Path,
        guest: GuestSim,
        faults: Faults,
        *,
        exec_enabled: bool = True,
        kernel: GuestKernel | None = None,
        clock: Callable[[], float],
    ) -> None:
        super().__init__(path, faults)
        self.guest = guest
        self.exec_enabled = exec_enabled
        self.kernel = GuestKernel() if kernel is None else kernel
        self.clock = clock
        # How long a guest-exec'd process runs before guest-exec-status says it exited.
        self.exec_duration = 0.0
        self._next_pid = 1000
        self._procs: dict[int, _Process] = {}
        self._handlers: dict[str, Callable[[dict[str, Any]], Any]] = {
            "guest-sync": self._sync,
            "guest-sync-delimited": self._sync_delimited,
            "guest-ping": self._ping,
            "guest-info": self._info,
            "guest-exec": self._exec,
            "guest-exec-status": self._exec_status,
        }

    def command(self, name: str, args: dict[str, Any]) -> Any:
        handler = self._handlers.get(name)
        if handler is None:
            raise QMPError(f"The command {name} has not been found", "CommandNotFound")
        if not self.exec_enabled and name in ("guest-exec", "guest-exec-status"):
            # qemu-ga --block-rpcs: QEMU 7.2's qmp_dispatch refuses with CommandNotFound.
            raise QMPError(f"Command {name} has been disabled", "CommandNotFound")
        return handler(args)

    def _sync(self, args: dict[str, Any]) -> Any:
        check_args(args, {"id": int})
        return args["id"]

    def _sync_delimited(self, args: dict[str, Any]) -> Any:
        value = self._sync(args)
        writer = self._current
        if writer is not None:
            writer.write(b"\xff")
        return value

    def _ping(self, args: dict[str, Any]) -> dict[str, Any]:
        check_args(args, {})
        return {}

    def _info(self, args: dict[str, Any]) -> dict[str, Any]:
        check_args(args, {})
        commands = []
        for name in sorted(self._handlers):
            enabled = self.exec_enabled or name not in ("guest-exec", "guest-exec-status")
            commands.append({"enabled": enabled, "name": name, "success-response": True})
        return {"version": QGA_VERSION, "supported_commands": commands}

    def _exec(self, args: dict[str, Any]) -> dict[str, Any]:
        check_args(
            args,
            {"path": str},
            {"arg": list, "env": list, "input-data": str, "capture-output": bool},
        )
        path: str = args["path"]
        argv: list[Any] = args.get("arg", [])
        for i, arg in enumerate(argv):
            if not isinstance(arg, str):
                raise QMPError(f"Invalid parameter type for 'arg[{i}]', expected: string")
        raw_input = args.get("input-data")
        input_data = b""
        if isinstance(raw_input, str):
            try:
                input_data = base64.b64decode(raw_input, validate=True)
            except ValueError:
                raise _failed("Invalid base64 in input-data") from None
        capture: bool = args.get("capture-output", False)
        code, out, err = run_command(path, argv, self.guest, input_data, self.kernel)
        pid = self._next_pid
        self._next_pid += 1
        self._procs[pid] = _Process(code, out, err, capture, self.clock() + self.exec_duration)
        return {"pid": pid}

    def _exec_status(self, args: dict[str, Any]) -> dict[str, Any]:
        check_args(args, {"pid": int})
        pid: int = args["pid"]
        proc = self._procs.get(pid)
        if proc is None:
            raise QMPError("Invalid parameter 'pid'")
        if self.clock() < proc.done_at:
            return {"exited": False}
        del self._procs[pid]  # qemu-ga forgets a process once it reported its exit
        status: dict[str, Any] = {"exited": True, "exitcode": proc.exitcode}
        if proc.capture:
            if proc.out:
                status["out-data"] = base64.b64encode(proc.out).decode()
            if proc.err:
                status["err-data"] = base64.b64encode(proc.err).decode()
        return status
