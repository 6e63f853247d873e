"""balloonctl's exit codes, and the one function that maps errors to them.

====  ===============  ======================================================================
code  name             meaning
====  ===============  ======================================================================
0     OK               everything asked for was done
1     FAILURE          an unexpected failure (a bug: please report it)
2     USAGE            bad arguments: unknown command or option, bad size, unknown VM, config
3     UNREACHABLE      a VM's socket is missing, refused, busy with another client, or dropped;
                       a socket libvirt holds; libvirtd not running or refusing the URI; the
                       libvirt domain not running (or destroyed mid-command); or the host's
                       memory files (meminfo, PSI, KSM) cannot be read
4     QMP_ERROR        QEMU or libvirt refused a command (no balloon device) or answered
                       nonsense (a reply of the wrong shape), the hint cannot be honoured, or
                       the guest agent failed (or does not respond)
5     UNSAFE_TARGET    a target refused before it was sent (above RAM or max, below floor)
6     TIMEOUT          a reply or the balloon did not arrive in time, the balloon is stuck, or
                       the guest has no balloon driver loaded (so it never moves)
7     PARTIAL          several VMs were asked and some, not all, failed
8     JOURNAL          the journal cannot be written or read (a change made may be unrecorded)
74    STATE_FILE       balloonctl's state file cannot be read or written (as sysexits'
                       EX_IOERR); the CLI itself only warns and goes on without it
130   INTERRUPTED      stopped by Ctrl-C (SIGINT)
143   TERMINATED       stopped by SIGTERM (``wave`` after setting the original target again,
                       ``auto``, ``set --wait``)
====  ===============  ======================================================================

When every one of several VMs fails, the code is the worst of their codes (highest).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from balloonctl import errors
from balloonctl.errors import (
    AgentError,
    BadReply,
    BalloonError,
    ConnectFailed,
    Disconnected,
    DriverNotReady,
    HintUnsupported,
    HostReadError,
    JournalError,
    QMPCommandError,
    QMPTimeout,
    StateFileError,
    UnsafeTarget,
    UsageError,
    WaitTimeout,
)

__all__ = ["ExitCode", "combine", "exit_code_for"]


class ExitCode(enum.IntEnum):
    OK = 0
    FAILURE = 1
    USAGE = 2  # also what click uses for its own usage errors
    UNREACHABLE = 3
    QMP_ERROR = 4
    UNSAFE_TARGET = 5
    TIMEOUT = 6
    PARTIAL = 7
    JOURNAL = 8
    STATE_FILE = 74  # sysexits.h EX_IOERR: an I/O error on a file balloonctl owns
    INTERRUPTED = 130
    TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process killed by it


# Order matters: the first class an error is an instance of decides.
_CODES: tuple[tuple[type[BaseException], ExitCode], ...] = (
    (UsageError, ExitCode.USAGE),
    (UnsafeTarget, ExitCode.UNSAFE_TARGET),
    (ConnectFailed, ExitCode.UNREACHABLE),
    (Disconnected, ExitCode.UNREACHABLE),
    (HostReadError, ExitCode.UNREACHABLE),
    (WaitTimeout, ExitCode.TIMEOUT),
    (QMPTimeout, ExitCode.TIMEOUT),
    (DriverNotReady, ExitCode.TIMEOUT),  # a balloon that cannot move is a stuck balloon
    (QMPCommandError, ExitCode.QMP_ERROR),
    (BadReply, ExitCode.QMP_ERROR),
    (HintUnsupported, ExitCode.QMP_ERROR),
    (AgentError, ExitCode.QMP_ERROR),
    (JournalError, ExitCode.JOURNAL),
    (StateFileError, ExitCode.STATE_FILE),
    (KeyboardInterrupt, ExitCode.INTERRUPTED),
)


def exit_code_for(error: BaseException | type[BaseException] | str) -> ExitCode:
    """The exit code for an error, its class, or its class name (``BalloonState.error_kind``).
    This is the only place that decides it; an unknown error is FAILURE, an unknown class
    name (a VM that could not be read for a reason not in the tree) is UNREACHABLE.
    """
    if isinstance(error, str):
        found = getattr(errors, error, None)
        if not (isinstance(found, type) and issubclass(found, BalloonError)):
            return ExitCode.UNREACHABLE
        error = found
    cls = error if isinstance(error, type) else type(error)
    for base, code in _CODES:
        if issubclass(cls, base):
            return code
    return ExitCode.FAILURE


def combine(codes: Iterable[ExitCode]) -> ExitCode:
    """One code for several VMs: OK if all succeeded, PARTIAL if some failed, else the
    worst failure."""
    codes = list(codes)
    failed = [c for c in codes if c is not ExitCode.OK]
    if not failed:
        return ExitCode.OK
    if len(failed) < len(codes):
        return ExitCode.PARTIAL
    return max(failed)
