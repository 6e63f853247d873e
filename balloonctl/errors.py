"""One error tree for balloonctl.

Third-party failures (qemu.qmp, OSError, asyncio timeouts, JSON) are translated into this
tree exactly once, at the boundary where they happen (``qmpsession.py`` for QMP, ``qga.py`` for
the guest agent, ``libvirt/parse.py`` for libvirt). ``asyncio.CancelledError`` is never wrapped.

    BalloonError                      anything balloonctl raises on purpose
    ├── UsageError                    the caller asked for something malformed
    │   ├── SizeError                 a size, percentage or duration that does not parse
    │   ├── UnknownVM                 no VM of that name in the inventory
    │   └── BackendMissing            an optional backend is not installed (balloonctl[libvirt])
    ├── UnsafeTarget                  a target refused before it was sent (above RAM, below floor)
    ├── ConnectFailed                 the QMP/QGA socket cannot be reached (missing, refused)
    │   ├── SocketBusy                connected, but no greeting: another client holds the socket
    │   ├── ManagedByLibvirt          a QMP socket libvirt holds: reach the VM with --libvirt
    │   ├── LibvirtUnavailable        libvirtd is not running, or the URI cannot be opened
    │   └── LibvirtDenied             libvirtd refuses this user the URI (permission denied)
    ├── Disconnected                  the peer went away (mid-command, or VM shut down)
    │   └── DomainNotRunning          the libvirt domain is not running (or no longer exists)
    ├── QMPTimeout                    a reply did not arrive in time
    ├── BadReply                      QEMU's reply (or event) has the wrong shape: a hypervisor
    │                                 that answered nonsense (keeps sent/received)
    ├── QMPCommandError               QEMU answered a command with an error (keeps sent/received)
    │   └── NoBalloonDevice           the VM has no virtio-balloon device (DeviceNotActive)
    ├── DriverNotReady                the guest has not loaded virtio_balloon (no stats)
    ├── WaitTimeout                   the balloon did not reach its target in time
    │   └── StuckBalloon              ``actual`` stopped moving short of the target
    ├── HintUnsupported               no way to honour the cache-first hint on this VM
    ├── HostReadError                 the host's meminfo, PSI or KSM file is unreadable or malformed
    ├── AgentError                    the guest agent failed or is unreachable
    │   ├── AgentExecBlocked          the guest agent refuses guest-exec
    │   └── BadAgentReply             the guest agent's reply has the wrong shape (keeps
    │                                 sent/received)
    ├── JournalError                  the journal cannot be written or read (names the file),
    │                                 or one of its lines has the wrong shape
    └── StateFileError                balloonctl's own state file cannot be read or written

Every error's ``str()`` is one line meant for an operator; ``vm`` names the VM when known.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AgentError",
    "AgentExecBlocked",
    "BackendMissing",
    "BadAgentReply",
    "BadReply",
    "BalloonError",
    "ConnectFailed",
    "Disconnected",
    "DomainNotRunning",
    "DriverNotReady",
    "HintUnsupported",
    "HostReadError",
    "JournalError",
    "LibvirtDenied",
    "LibvirtUnavailable",
    "ManagedByLibvirt",
    "NoBalloonDevice",
    "QMPCommandError",
    "QMPTimeout",
    "SizeError",
    "SocketBusy",
    "StateFileError",
    "StuckBalloon",
    "UnknownVM",
    "UnsafeTarget",
    "UsageError",
    "WaitTimeout",
]


class BalloonError(Exception):
    """Base of every error balloonctl raises on purpose."""

    def __init__(self, message: str, *, vm: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.vm = vm

    def __str__(self) -> str:
        if self.vm:
            return f"{self.vm}: {self.message}"
        return self.message

    def with_vm(self, vm: str) -> BalloonError:
        """Name the VM this error is about (returns self)."""
        if self.vm is None:
            self.vm = vm
        return self


class UsageError(BalloonError):
    """The caller asked for something malformed."""


class SizeError(UsageError):
    """A size, percentage or duration that does not parse."""


class UnknownVM(UsageError):
    """No VM by that name in the inventory."""


class BackendMissing(UsageError):
    """An optional backend's Python package is not installed (the message names the extra)."""


class UnsafeTarget(BalloonError):
    """A balloon target refused before it was sent to QEMU."""

    def __init__(
        self, message: str, *, vm: str | None = None, target: int | None = None
    ) -> None:
        super().__init__(message, vm=vm)
        self.target = target


class ConnectFailed(BalloonError):
    """The QMP or guest-agent socket cannot be reached."""


class SocketBusy(ConnectFailed):
    """Connected, but QEMU sent no greeting: another QMP client holds the socket."""


class ManagedByLibvirt(ConnectFailed):
    """A QMP socket that libvirt holds for its domain's lifetime; ``--libvirt`` reaches it."""


class LibvirtUnavailable(ConnectFailed):
    """libvirtd is not running at the URI, or the URI cannot be opened."""


class LibvirtDenied(ConnectFailed):
    """libvirtd refuses this user the URI (socket permissions, polkit, ACLs)."""


class Disconnected(BalloonError):
    """The peer went away (mid-command, or the VM shut down)."""


class DomainNotRunning(Disconnected):
    """The libvirt domain is not running, or no longer exists (destroyed, undefined)."""


class QMPTimeout(BalloonError):
    """A QMP reply did not arrive in time."""


class BadReply(BalloonError):
    """QEMU (or whatever serves the QMP socket) sent a reply or event of the wrong shape.

    ``sent`` is the command as sent (None for an event), ``received`` what came back; the
    message shows the latter with control characters escaped (``balloonctl.qmp_replies``).
    """

    def __init__(self, message: str, *, vm: str | None = None, sent: Any = None,
                 received: Any = None) -> None:
        super().__init__(message, vm=vm)
        self.sent = sent
        self.received = received


class QMPCommandError(BalloonError):
    """QEMU answered a command with an error.

    ``error_class`` is QEMU's class (``GenericError``, ``DeviceNotFound``...), ``sent`` the
    command as sent and ``received`` the reply.
    """

    def __init__(
        self,
        message: str,
        *,
        vm: str | None = None,
        error_class: str = "GenericError",
        sent: Any = None,
        received: Any = None,
    ) -> None:
        super().__init__(message, vm=vm)
        self.error_class = error_class
        self.sent = sent
        self.received = received


class NoBalloonDevice(QMPCommandError):
    """The VM has no virtio-balloon device."""


class DriverNotReady(BalloonError):
    """The guest has not loaded the virtio_balloon driver."""


class WaitTimeout(BalloonError):
    """The balloon did not reach its target in time."""

    def __init__(
        self, message: str, *, vm: str | None = None, actual: int | None = None,
        target: int | None = None,
    ) -> None:
        super().__init__(message, vm=vm)
        self.actual = actual
        self.target = target


class StuckBalloon(WaitTimeout):
    """``actual`` stopped moving short of the target."""


class HintUnsupported(BalloonError):
    """The cache-first hint cannot be honoured on this VM."""


class HostReadError(BalloonError):
    """A host memory file (``/proc/meminfo``, ``/proc/pressure/memory``, KSM's files, or a
    simulated host's) cannot be read or does not have the kernel's shape. ``path`` names it."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class AgentError(BalloonError):
    """The guest agent failed or is unreachable. ``error_class`` is the agent's error class
    when it answered with an error (``CommandNotFound``, ``GenericError``...), else None."""

    def __init__(self, message: str, *, vm: str | None = None,
                 error_class: str | None = None) -> None:
        super().__init__(message, vm=vm)
        self.error_class = error_class


class AgentExecBlocked(AgentError):
    """The guest agent refuses guest-exec (blocked by its configuration)."""


class BadAgentReply(AgentError):
    """The guest agent sent a reply of the wrong shape (``balloonctl.qga_replies``).

    ``sent`` is the command as sent, ``received`` what came back.
    """

    def __init__(self, message: str, *, vm: str | None = None, sent: Any = None,
                 received: Any = None) -> None:
        super().__init__(message, vm=vm)
        self.sent = sent
        self.received = received


class JournalError(BalloonError):
    """The journal cannot be written or read, or one of its lines has the wrong shape.

    ``path`` is the journal file when known; ``str()`` names it. ``auto`` stops on this rather
    than run unrecorded.
    """

    def __init__(
        self, message: str, *, path: str | None = None, vm: str | None = None
    ) -> None:
        super().__init__(message, vm=vm)
        self.path = path

    def __str__(self) -> str:
        text = super().__str__()
        return f"journal {self.path}: {text}" if self.path else text
class StateFileError(BalloonError):
    """balloonctl's state file (``store.py``) cannot be read or written; ``path`` names it.

    The message is one line naming the file and what is wrong with it.
    """

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"state file {path}: {problem}")
        self.path = path
        self.problem = problem
