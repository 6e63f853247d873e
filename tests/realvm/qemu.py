"""Launch real QEMU VMs for the end-to-end tests, and talk to them without balloonctl.

``QemuVM`` runs ``qemu-system-x86_64`` as a child process (never ``-daemonize``) with its
sockets, serial log and stderr in a private temp dir, and kills it by its own PID. The
raw QMP/QGA helpers here are deliberately independent of balloonctl, so that the tests
can check balloonctl against what QEMU itself says.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

T = TypeVar("T")

QEMU = "qemu-system-x86_64"
MiB = 1024 * 1024
BALLOON_QOM_PATH = "/machine/peripheral/balloon0"
QGA_PORT_NAME = "org.qemu.guest_agent.0"
GUEST_CMDLINE = "console=ttyS0 panic=-1 quiet loglevel=3"
# Under TCG on a loaded 2-core machine a boot that takes 4 s alone can take many times that.
DEFAULT_BOOT_TIMEOUT = float(os.environ.get("BALLOONCTL_BOOT_TIMEOUT", "90"))


class VMError(RuntimeError):
    """QEMU or the guest did not do what the test harness needed."""


class QMPReplyError(RuntimeError):
    """QEMU answered a raw QMP command with an error."""

    def __init__(self, error_class: str, desc: str) -> None:
        super().__init__(f"{error_class}: {desc}")
        self.error_class = error_class
        self.desc = desc


def poll_until(
    condition: Callable[[], T | None], *, timeout: float, interval: float = 0.1,
    what: str = "condition",
) -> T:
    """Call ``condition`` until it returns something other than None/False; TimeoutError
    naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not true after {timeout:.0f} s")
        time.sleep(interval)


# --- accelerator --------------------------------------------------------------------------


def kvm_usable() -> tuple[bool, str]:
    """Whether KVM really works here, and why not when it does not."""
    if not os.path.exists("/dev/kvm"):
        return False, "/dev/kvm does not exist"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is not accessible"
    # On a nested kvm_pvm host /dev/kvm exists but guests abort (-cpu host) or never boot.
    if os.path.exists("/sys/module/kvm_pvm"):
        return False, "kvm_pvm nested host (KVM guests do not boot here)"
    return True, "KVM available"


def accelerator_args() -> tuple[str, list[str]]:
    """(name, QEMU args) for the accelerator: BALLOONCTL_ACCEL=kvm|tcg, else KVM where it
    works and multi-threaded TCG elsewhere."""
    choice = os.environ.get("BALLOONCTL_ACCEL", "").strip().lower()
    if choice not in ("", "kvm", "tcg"):
        raise VMError(f"BALLOONCTL_ACCEL={choice!r}: expected 'kvm' or 'tcg'")
    if not choice:
        choice = "kvm" if kvm_usable()[0] else "tcg"
    if choice == "kvm":
        return "kvm", ["-accel", "kvm", "-cpu", "host"]
    return "tcg", ["-accel", "tcg,thread=multi", "-cpu", "max"]


# --- the guest image ----------------------------------------------------------------------


@dataclass(frozen=True)
class GuestImage:
    """What scripts/build-guest produced."""

    kernel: Path
    initrd: Path
    data: Path

    @classmethod
    def from_dir(cls, directory: Path) -> GuestImage:
        image = cls(
            kernel=directory / "vmlinuz",
            initrd=directory / "initramfs.cpio.gz",
            data=directory / "data.img",
        )
        for path in (image.kernel, image.initrd, image.data):
            if not path.is_file():
                raise VMError(f"{path} missing: run scripts/build-guest --out {directory}")
        return image


# --- raw QMP and QGA ----------------------------------------------------------------------


class _JsonLines:
    """A unix-socket connection carrying one JSON message per line, both ways."""

    _peer = "socket"

    def __init__(self, path: Path | str, *, timeout: float) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(path))
            self._file = self._sock.makefile("rwb")
            self._handshake()
        except BaseException:
            self._sock.close()
            raise

    def _handshake(self) -> None:
        pass

    def _send(self, name: str, arguments: Mapping[str, Any] | None = None) -> None:
        message: dict[str, Any] = {"execute": name}
        if arguments:
            message["arguments"] = dict(arguments)
        self._file.write(json.dumps(message).encode() + b"\n")
        self._file.flush()

    def _read(self) -> dict[str, Any]:
        line = self._file.readline()
        if not line:
            raise EOFError(f"{self._peer} closed the connection")
        message: dict[str, Any] = json.loads(line)
        return message

    def command(self, name: str, arguments: Mapping[str, Any] | None = None) -> Any:
        """Send a command and return its ``return`` value (events are skipped).

        Raises QMPReplyError when the peer answers with an error."""
        self._send(name, arguments)
        while True:
            reply = self._read()
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                error = reply["error"]
                raise QMPReplyError(error.get("class", "?"), error.get("desc", ""))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RawQMP(_JsonLines):
    """A minimal synchronous QMP client: greeting, capabilities, commands; events skipped.

    QEMU serves one QMP client at a time, so hold it only briefly.
    """

    _peer = "QMP socket"
    greeting: dict[str, Any]

    def __init__(self, path: Path | str, *, timeout: float = 5.0) -> None:
        super().__init__(path, timeout=timeout)

    def _handshake(self) -> None:
        self.greeting = self._read()
        if "QMP" not in self.greeting:
            raise VMError(f"not a QMP greeting: {self.greeting}")
        self.command("qmp_capabilities")


@dataclass(frozen=True)
class ExecResult:
    exitcode: int | None
    stdout: str
    stderr: str


class RawQGA(_JsonLines):
    """A minimal synchronous guest-agent client (no greeting; guest-sync first)."""

    _peer = "guest agent socket"

    def __init__(self, path: Path | str, *, timeout: float = 5.0) -> None:
        super().__init__(path, timeout=timeout)

    def _handshake(self) -> None:
        # Replies meant for an earlier client may still be queued: skip to our sync id.
        token = random.randrange(1, 2**31)
        self._send("guest-sync", {"id": token})
        while self._read().get("return") != token:
            pass

    def exec(self, argv: Sequence[str], *, timeout: float = 60.0) -> ExecResult:
        """Run a program in the guest (guest-exec) and wait for it to exit."""
        pid = self.command(
            "guest-exec", {"path": argv[0], "arg": list(argv[1:]), "capture-output": True}
        )["pid"]

        def exited() -> dict[str, Any] | None:
            status: dict[str, Any] = self.command("guest-exec-status", {"pid": pid})
            return status if status.get("exited") else None

        status = poll_until(exited, timeout=timeout, interval=0.05, what=f"guest {argv!r}")
        return ExecResult(
            exitcode=status.get("exitcode"),
            stdout=base64.b64decode(status.get("out-data", "")).decode(errors="replace"),
            stderr=base64.b64decode(status.get("err-data", "")).decode(errors="replace"),
        )


# --- the VM -------------------------------------------------------------------------------


def _die_with_parent() -> None:
    # If the test run is killed, QEMU must not linger: PR_SET_PDEATHSIG = 1.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(none)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


class QemuVM:
    """One QEMU process. ``start()`` launches it and waits for QMP; ``wait_ready()`` waits
    for the guest's balloon driver; ``stop()`` kills it and removes its temp dir.

    ``image=None`` starts no guest at all (useful with ``paused=True``: QMP works, the
    CPUs never run). ``memory`` is in MiB. ``balloon_props`` are extra properties of the
    ``virtio-balloon-pci`` device, e.g. ``{"deflate-on-oom": "on"}``.
    """

    def __init__(
        self,
        image: GuestImage | None,
        *,
        name: str = "vm",
        memory: int = 1024,
        balloon: bool = True,
        balloon_props: Mapping[str, str | bool | int] | None = None,
        paused: bool = False,
        smp: int = 1,
    ) -> None:
        self.image = image
        self.name = name
        self.memory = memory
        self.balloon = balloon
        self.balloon_props = dict(balloon_props or {})
        self.paused = paused
        self.smp = smp
        self.accel, self._accel_args = accelerator_args()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"balloonctl-{name}-"))
        self.qmp_path = self.workdir / "qmp.sock"
        self.qga_path = self.workdir / "qga.sock"
        self.serial_path = self.workdir / "serial.log"
        self.stderr_path = self.workdir / "qemu.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.boot_seconds: float | None = None

    @property
    def ram(self) -> int:
        """Guest RAM in bytes."""
        return self.memory * MiB

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def command_line(self) -> list[str]:
        qemu = shutil.which(QEMU)
        if qemu is None:
            raise VMError(f"{QEMU} not found: apt-get install -y qemu-system-x86")
        args = [
            qemu, "-M", "pc", *self._accel_args,
            "-m", str(self.memory), "-smp", str(self.smp),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-name", self.name,
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
        ]
        if self.paused:
            args.append("-S")
        if self.image is not None:
            args += [
                "-kernel", str(self.image.kernel),
                "-initrd", str(self.image.initrd),
                "-append", GUEST_CMDLINE,
                "-serial", f"file:{self.serial_path}",
            ]
        if self.balloon:
            props = "".join(
                f",{key}={_prop(value)}" for key, value in self.balloon_props.items()
            )
            args += ["-device", f"virtio-balloon-pci,id=balloon0{props}"]
        if self.image is not None:
            args += [
                "-device", "virtio-serial-pci",
                "-chardev", f"socket,id=qga0,path={self.qga_path},server=on,wait=off",
                "-device", f"virtserialport,chardev=qga0,name={QGA_PORT_NAME}",
                "-drive", f"file={self.image.data},if=none,id=d0,format=raw,readonly=on",
                "-device", "virtio-blk-pci,drive=d0",
            ]
        return args

    def start(self, *, timeout: float = 15.0) -> QemuVM:
        """Launch QEMU and wait (bounded) until its QMP socket exists."""
        if self.proc is not None:
            raise VMError(f"{self.name}: already started")
        args = self.command_line()
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                cwd=self.workdir, preexec_fn=_die_with_parent,
            )
        self._started_at = time.monotonic()
        self._wait("the QMP socket to appear", self.qmp_path.exists, timeout)
        return self

    def _wait(self, what: str, condition: Callable[[], Any], timeout: float) -> Any:
        def check() -> Any:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise self.failure(f"QEMU exited (status {code}) while waiting for {what}")
            return condition()

        try:
            return poll_until(check, timeout=timeout, what=what)
        except TimeoutError as exc:
            raise self.failure(str(exc)) from None

    def failure(self, message: str) -> VMError:
        """A VMError carrying the tails of QEMU's stderr and the guest's serial log."""
        return VMError(
            f"{self.name}: {message}\n"
            f"--- qemu stderr ({self.stderr_path}) ---\n{_tail(self.stderr_path)}\n"
            f"--- guest serial ({self.serial_path}) ---\n{_tail(self.serial_path)}"
        )

    def qmp(self, *, timeout: float = 5.0) -> RawQMP:
        """A short-lived raw QMP connection (use as a context manager)."""
        return RawQMP(self.qmp_path, timeout=timeout)

    def qga(self, *, timeout: float = 10.0) -> RawQGA:
        """A short-lived raw guest-agent connection (use as a context manager)."""
        return RawQGA(self.qga_path, timeout=timeout)

    def guest_stats(self) -> dict[str, Any]:
        with self.qmp() as qmp:
            stats: dict[str, Any] = qmp.command(
                "qom-get", {"path": BALLOON_QOM_PATH, "property": "guest-stats"}
            )
            return stats

    def wait_ready(self, *, timeout: float = DEFAULT_BOOT_TIMEOUT) -> float:
        """Wait until the guest's balloon driver has reported (``last-update != 0``) and
        the guest agent answers. Returns the seconds since QEMU started."""

        def driver_reported() -> bool:
            return bool(self.guest_stats().get("last-update", 0) != 0)

        def agent_answers() -> bool:
            try:
                with self.qga(timeout=2.0) as qga:
                    return bool(qga.command("guest-ping") == {})
            except (OSError, EOFError):
                return False

        self._wait("the guest's balloon driver to report stats", driver_reported, timeout)
        self._wait("the guest agent to answer", agent_answers, timeout)
        self.boot_seconds = time.monotonic() - self._started_at
        return self.boot_seconds

    def guest_exec(self, *argv: str, timeout: float = 60.0) -> ExecResult:
        """Run a command in the guest through the guest agent; VMError unless it exits 0."""
        with self.qga(timeout=timeout) as qga:
            result = qga.exec(argv, timeout=timeout)
        if result.exitcode != 0:
            raise self.failure(f"guest {' '.join(argv)!r} exited {result.exitcode}: "
                               f"{result.stderr.strip()}")
        return result

    def stop(self) -> None:
        """Kill QEMU (by its PID) and remove the temp dir. Safe to call twice."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> QemuVM:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _prop(value: str | bool | int) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def balloonctl_path() -> str:
    # The console script installed next to this interpreter (the project's venv).
    here = Path(sys.executable).parent / "balloonctl"
    found = str(here) if here.is_file() else shutil.which("balloonctl")
    if found is None:
        import pytest  # this module is also the benches' (no pytest needed there)

        pytest.fail("the balloonctl console script is not installed (pip install -e .)")
    return found
