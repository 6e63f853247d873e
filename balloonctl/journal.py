"""The journal: an append-only record of every balloon target change, one JSON line each.

The format is an API for scripts; ``docs/journal.md`` describes every key. In short::

    {"v": 1, "id": "3f0c9a1b2d4e5f60", "time": 1718000000.25, "vm": "vm1",
     "qmp": "/run/vms/vm1.qmp", "previous": 2147483648, "target": 1610612736,
     "reason": "set by hand", "origin": {"command": "set", "pid": 4242, "host": "hv1"}}

Writing (``Journal.append``): the whole batch of lines goes out in one ``write`` on an
``O_APPEND`` descriptor while an exclusive ``flock`` is held, then ``fsync`` (and, when the
file was created, ``fsync`` of its directory) before ``append`` returns. The lock, not the
size of the write, is what keeps lines of concurrent processes from interleaving, so there is
no size limit to respect (a line is a few hundred bytes). A write that fails part way is cut
back to where it began. The file is created ``0600``; directories the journal creates are
``0700`` (existing directories are left as they are).

Reading (``read_journal``/``parse_journal``): each line is parsed in one place
(``JournalEntry.from_json``). A bad line never stops the reading: a last line that does not
parse (a crash mid-write) gives one ``torn`` warning, any other bad line a warning naming its
line number; every good line is kept.

``balloonctl.history`` filters and renders entries and plans ``undo``. This module does no
QMP: the CLI sets targets and journals what it did.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import json
import math
import os
import secrets
import socket
import stat
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from balloonctl.errors import JournalError
from balloonctl.store import default_state_path
from balloonctl.text import escape_text

__all__ = [
    "ENV_JOURNAL",
    "FORMAT_VERSION",
    "Journal",
    "JournalEntry",
    "JournalRead",
    "JournalWarning",
    "Origin",
    "journal_path",
    "parse_journal",
    "qmp_address",
    "read_journal",
]

ENV_JOURNAL = "BALLOONCTL_JOURNAL"
FORMAT_VERSION = 1
JOURNAL_NAME = "journal.jsonl"


class Origin(enum.StrEnum):
    """Which balloonctl command made a change; ``FOREIGN`` is a change someone else made
    (virsh, a QMP script, another tool) that balloonctl detected and recorded."""

    SET = "set"
    WAVE = "wave"
    AUTO = "auto"
    DASHBOARD = "dashboard"
    UNDO = "undo"
    FOREIGN = "foreign"


def journal_path(explicit: str | Path | None = None, *, configured: str | None = None) -> Path:
    """Where the journal lives: ``explicit`` (a command-line argument), else
    ``$BALLOONCTL_JOURNAL``, else ``configured`` (the config file's setting), else
    ``journal.jsonl`` beside the state file (``$XDG_STATE_HOME/balloonctl/``; beside
    ``$BALLOONCTL_STATE`` when that is set)."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(ENV_JOURNAL)
    if env:
        return Path(env).expanduser()
    if configured:
        return Path(configured).expanduser()
    return default_state_path().parent / JOURNAL_NAME


def qmp_address(qmp: str) -> str:
    """The address to journal for a VM: a socket path made absolute with symlinks resolved;
    ``host:port`` as given."""
    if os.sep in qmp or not _looks_like_tcp(qmp):
        return os.path.realpath(qmp)
    return qmp


def _looks_like_tcp(qmp: str) -> bool:
    host, sep, port = qmp.rpartition(":")
    return bool(sep and host and port.isdigit())


# --- entries -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One target change. Sizes are int bytes; ``previous`` is None when it was unknown."""

    id: str
    time: float
    vm: str
    qmp: str
    previous: int | None
    target: int
    reason: str
    origin: Origin
    pid: int
    host: str | None = None
    undoes: tuple[str, ...] = ()  # undo entries: the ids of the changes they took back

    @classmethod
    def new(
        cls,
        *,
        vm: str,
        qmp: str,
        previous: int | None,
        target: int,
        reason: str,
        origin: Origin | str,
        undoes: Iterable[str] = (),
        now: float | None = None,
        pid: int | None = None,
        host: str | None = None,
    ) -> JournalEntry:
        """An entry for a change made now by this process; ``qmp`` is resolved with
        ``qmp_address``. ``host`` defaults to this machine's name.

        Raises:
            JournalError: a field of the wrong shape (the same checks as reading).
        """
        entry = cls(
            id=secrets.token_hex(8),
            time=time.time() if now is None else now,
            vm=vm,
            qmp=qmp_address(qmp),
            previous=previous,
            target=target,
            reason=reason,
            origin=Origin(origin),
            pid=os.getpid() if pid is None else pid,
            host=socket.gethostname() if host is None else host,
            undoes=tuple(undoes),
        )
        return cls.from_json(entry.to_json())  # never build what the reader would refuse

    def to_json(self) -> dict[str, Any]:
        """The entry as the journal stores it (the documented keys)."""
        origin: dict[str, Any] = {"command": self.origin.value, "pid": self.pid}
        if self.host is not None:
            origin["host"] = self.host
        data: dict[str, Any] = {
            "v": FORMAT_VERSION,
            "id": self.id,
            "time": self.time,
            "vm": self.vm,
            "qmp": self.qmp,
            "previous": self.previous,
            "target": self.target,
            "reason": self.reason,
            "origin": origin,
        }
        if self.undoes:
            data["undoes"] = list(self.undoes)
        return data

    def to_line(self) -> bytes:
        """One journal line: ASCII JSON (control characters escaped) and a newline."""
        return json.dumps(self.to_json(), ensure_ascii=True, allow_nan=False,
                          separators=(",", ":")).encode("ascii") + b"\n"

    @classmethod
    def from_json(cls, data: Any) -> JournalEntry:
        """Parse one decoded journal line; the only place journal data is read.

        Raises:
            JournalError: what is wrong with it (a missing key, a wrong type, a negative
                size, an unknown origin, a newer format).
        """
        if not isinstance(data, dict):
            raise JournalError(f"not an object but {_kind(data)}")
        version = data.get("v")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise JournalError("'v' must be a format version (an integer >= 1)")
        if version > FORMAT_VERSION:
            raise JournalError(f"format v{version} is newer than this balloonctl reads "
                               f"(v{FORMAT_VERSION})")
        origin = _get(data, "origin", dict)
        command = _get(origin, "command", str, where="origin.")
        try:
            origin_kind = Origin(command)
        except ValueError:
            raise JournalError(f"unknown origin.command {escape_text(command)!r}") from None
        pid = _get(origin, "pid", int, where="origin.")
        if pid <= 0:
            raise JournalError("origin.pid must be positive")
        host = origin.get("host")
        if host is not None and not isinstance(host, str):
            raise JournalError(f"origin.host must be a string, not {_kind(host)}")
        stamp = data.get("time")
        if (not isinstance(stamp, int | float) or isinstance(stamp, bool)
                or not math.isfinite(stamp) or stamp < 0):
            raise JournalError("'time' must be a non-negative number of seconds")
        undoes = data.get("undoes", [])
        if not isinstance(undoes, list) or not all(isinstance(u, str) for u in undoes):
            raise JournalError("'undoes' must be a list of entry ids")
        entry_id = _get(data, "id", str)
        vm = _get(data, "vm", str)
        if not entry_id or not vm:
            raise JournalError("'id' and 'vm' must not be empty")
        return cls(
            id=entry_id,
            time=float(stamp),
            vm=vm,
            qmp=_get(data, "qmp", str),
            previous=_size(data, "previous", optional=True),
            target=_size_required(data, "target"),
            reason=_get(data, "reason", str),
            origin=origin_kind,
            pid=pid,
            host=host,
            undoes=tuple(undoes),
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _get(data: Mapping[str, Any], key: str, kind: type, *, where: str = "") -> Any:
    if key not in data:
        raise JournalError(f"missing {where}{key!r}")
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise JournalError(f"{where}{key!r} must be {kind.__name__}, not {_kind(value)}")
    return value


def _size(data: Mapping[str, Any], key: str, *, optional: bool) -> int | None:
    if key not in data:
        raise JournalError(f"missing {key!r}")
    value = data[key]
    if value is None and optional:
        return None
    if not _is_int(value) or value < 0:
        raise JournalError(f"{key!r} must be a size in bytes (an integer >= 0), "
                           f"not {_kind(value)} {escape_text(str(value))[:40]}")
    return int(value)


def _size_required(data: Mapping[str, Any], key: str) -> int:
    value = _size(data, key, optional=False)
    assert value is not None
    return value


# --- reading -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JournalWarning:
    """A line that was skipped. ``torn``: the last line, cut short by a crash mid-write."""

    line: int
    message: str
    torn: bool = False
    path: str | None = None

    def __str__(self) -> str:
        where = f"journal {self.path} " if self.path else ""
        what = "torn last line (a write cut short), skipped" if self.torn else "skipped"
        return f"{where}line {self.line}: {what}: {self.message}"


@dataclass(frozen=True, slots=True)
class JournalRead:
    entries: tuple[JournalEntry, ...] = ()
    warnings: tuple[JournalWarning, ...] = ()
    path: str | None = None


def parse_journal(data: bytes, *, path: str | None = None) -> JournalRead:
    """Parse a journal's bytes. Never raises: each bad line is one warning, the last bad
    line is reported as torn; blank lines (and NUL padding a crash can leave) are skipped."""
    lines = data.split(b"\n")
    numbered = [(n, raw) for n, raw in enumerate(lines, 1) if raw.strip(b" \t\r\x00")]
    entries: list[JournalEntry] = []
    warnings: list[JournalWarning] = []
    for index, (n, raw) in enumerate(numbered):
        try:
            entries.append(_parse_line(raw))
        except JournalError as exc:
            last = index == len(numbered) - 1
            warnings.append(JournalWarning(n, exc.message, torn=last, path=path))
    return JournalRead(tuple(entries), tuple(warnings), path)


def _parse_line(raw: bytes) -> JournalEntry:
    try:
        decoded = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise JournalError(f"not JSON ({escape_text(str(exc))[:80]})") from None
    return JournalEntry.from_json(decoded)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def read_journal(path: str | Path) -> JournalRead:
    """Read a whole journal under a shared lock (needs only read access). A missing file is
    an empty journal.

    Raises:
        JournalError: the file exists but cannot be read (names the file).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return JournalRead(path=str(path))
    except OSError as exc:
        raise _os_error("cannot read", path, exc) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        chunks: list[bytes] = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    except OSError as exc:
        raise _os_error("cannot read", path, exc) from None
    finally:
        os.close(fd)
    return parse_journal(b"".join(chunks), path=str(path))


def _os_error(doing: str, path: str | Path, exc: OSError) -> JournalError:
    code = errno.errorcode.get(exc.errno or 0, "")
    reason = exc.strerror or str(exc)
    return JournalError(f"{doing}: {reason}" + (f" ({code})" if code else ""), path=str(path))


# --- writing -------------------------------------------------------------------------------


class Journal:
    """The journal file of one user (or one ``--journal`` path)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else journal_path()

    def read(self) -> JournalRead:
        """Raises: JournalError: the file exists but cannot be read."""
        return read_journal(self.path)

    def append(self, *entries: JournalEntry) -> None:
        """Append entries (one change each, or a batch from one command) and fsync them.

        Returns only when the lines are on disk. A file whose last line was torn by a crash
        first gets the newline it lacks, so the new lines stay whole (the fragment stays in
        the file and reads as a bad line).

        Raises:
            JournalError: the journal cannot be written (read-only, full, a directory or
                something else where the file belongs); names the file. Nothing of this
                call's lines is left behind.
        """
        if not entries:
            return
        data = b"".join(entry.to_line() for entry in entries)
        try:
            self._ensure_dir(self.path.parent)
            with self._open() as (fd, created):
                self._write_locked(fd, data)
            if created:
                _fsync_dir(self.path.parent)
        except OSError as exc:
            raise _os_error("cannot write", self.path, exc) from None

    def check_writable(self) -> None:
        """Make sure ``append`` can write (creating the file, and its directories, as it
        would), so a command can refuse before it changes anything.

        Raises:
            JournalError: as ``append``.
        """
        try:
            self._ensure_dir(self.path.parent)
            with self._open() as (_, created):
                pass
            if created:
                _fsync_dir(self.path.parent)
        except OSError as exc:
            raise _os_error("cannot write", self.path, exc) from None

    @contextlib.contextmanager
    def _open(self) -> Iterator[tuple[int, bool]]:
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
        created = False
        try:
            fd = os.open(self.path, flags)
        except FileNotFoundError:
            try:
                fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o600)
                created = True
            except FileExistsError:  # another process created it meanwhile
                fd = os.open(self.path, flags)
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise JournalError("cannot write: not a regular file", path=str(self.path))
            if created:
                os.fchmod(fd, 0o600)  # exactly 0600, whatever the umask
            yield fd, created
        finally:
            os.close(fd)

    def _write_locked(self, fd: int, data: bytes) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by close
        start = os.fstat(fd).st_size
        if start and os.pread(fd, 1, start - 1) != b"\n":
            data = b"\n" + data  # end a torn line so this one starts on its own
        try:
            done = 0
            while done < len(data):  # a regular file writes short only at a limit (EFBIG)
                done += os.write(fd, data[done:])
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)  # under the lock: no one else appended since
            raise

    @staticmethod
    def _ensure_dir(directory: Path) -> None:
        """Create missing directories 0700, each made durable in its parent."""
        missing: list[Path] = []
        probe = directory
        while not probe.exists():
            missing.append(probe)
            if probe.parent == probe:
                break
            probe = probe.parent
        for new in reversed(missing):
            try:
                os.mkdir(new, 0o700)
            except FileExistsError:
                continue
            os.chmod(new, 0o700)
            _fsync_dir(new.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # some file systems cannot sync a directory at all
            raise
    finally:
        os.close(fd)
