"""What balloonctl remembers between invocations, per VM: the last target it set and the
cache-first hint state (QEMU keeps neither for stock devices).

A small JSON object at ``$BALLOONCTL_STATE`` or ``$XDG_STATE_HOME/balloonctl/state.json``,
one entry per VM keyed by ``state_key(address)``: the socket's real path, so ``--dir .``,
``//run/vm.qmp`` and a symlink name the same VM (entries under the old, unresolved keys are
found and moved on the next write). ``MemoryStore`` keeps the same in memory.

Reading needs no write access and takes no lock: every write replaces the whole file
atomically (a temp file in the same directory, fsync, rename, fsync of the directory), so a
reader sees one complete version, and a full disk or a writer killed mid-write leaves the
previous version in place. Writers serialise their read-modify-write with an exclusive
``flock`` on the directory. The file is created 0600 (its directory 0700). Each write drops
the entries of unix sockets that no longer exist; an edit that changes nothing writes
nothing.

A ``FileStore`` keeps the last version it read or wrote, keyed by the file's identity
(device, inode, size, mtime, ctime): a read of an unchanged file neither parses it nor
resolves its keys again. The identity alone is trusted only once the file is more than 3 s
older than the clock (a later write gets a later mtime then, even at FAT's 2 s resolution);
a file changed more recently is read again and compared byte for byte. A socket path that
is already real is resolved once per process (``state_key``).

A state file that cannot be used (unreadable, a directory, not UTF-8, not JSON of the right
shape, a dangling symlink, an unwritable directory, a full disk) is a ``StateFileError``
naming the file. ``FileStore`` raises it only when ``strict``; by default it logs the error
once as a warning (logger ``balloonctl.store``) and goes on in memory for the rest of its
life: reads see nothing (or what this process recorded), and the file keeps what it had.

The store itself is a dumb key -> dict map. ``BalloonClient`` records with each entry the
identity of the VM *instance* (one run of QEMU) it belongs to and ignores entries of any
other instance; see ``BalloonClient`` for the rule.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from balloonctl.errors import StateFileError

__all__ = [
    "STATE_ENV",
    "Change",
    "FileStore",
    "MemoryStore",
    "Store",
    "default_state_path",
    "private_state",
    "state_key",
]

log = logging.getLogger(__name__)

STATE_ENV = "BALLOONCTL_STATE"

# Bigger than any state balloonctl writes (a few hundred bytes per VM): not a state file.
_MAX_FILE_BYTES = 16 * 1024 * 1024

Change = Callable[[dict[str, Any]], dict[str, Any]]
"""``change(entry) -> new entry``: gets a copy of the entry ({} when none) and returns what to
store in its place; it runs under the store's lock (a read-modify-write no one interleaves)."""


class Store(Protocol):
    def get(self, key: str) -> dict[str, Any]: ...

    def update(self, key: str, **values: Any) -> None: ...

    def edit(self, key: str, change: Change) -> dict[str, Any]:
        """Replace the entry with ``change(entry)`` atomically; return the new entry."""
        ...


def _is_tcp(address: str) -> bool:
    # the rule of qmp._parse_address: host:port is TCP, anything with a slash is a path
    if "/" in address or ":" not in address:
        return False
    return address.rpartition(":")[2].isdigit()


# Socket paths found to be real paths already (``realpath(p) == p``): most keys, resolved
# on every read otherwise. A path with a symlink or ``..`` in it is resolved every time, so
# re-pointing a symlink is seen at once.
_REAL_PATHS: set[str] = set()
_REAL_PATHS_MAX = 4096


def state_key(address: str) -> str:
    """The key of a VM's entry: the real path of a unix socket (``os.path.realpath``: no
    ``.``, ``..``, ``//`` or symlinks), a ``host:port`` address as given."""
    if address in _REAL_PATHS or _is_tcp(address):
        return address
    real = os.path.realpath(address)
    if real == address:
        if len(_REAL_PATHS) >= _REAL_PATHS_MAX:
            _REAL_PATHS.clear()
        _REAL_PATHS.add(address)
    return real


def _lookup(data: dict[str, dict[str, Any]], key: str) -> tuple[str, dict[str, Any]]:
    """(the entry's key in ``data``, the entry) for an address; ({key}, {}) when none.
    Finds entries written under the address as given, before keys were real paths."""
    real = state_key(key)
    for candidate in (real, key):
        if candidate in data:
            return candidate, data[candidate]
    return real, {}


class MemoryStore:
    """Per-process state; the default for library users and tests."""

    def __init__(self, data: dict[str, dict[str, Any]] | None = None) -> None:
        self._data: dict[str, dict[str, Any]] = dict(data or {})

    def get(self, key: str) -> dict[str, Any]:
        return dict(_lookup(self._data, key)[1])

    def update(self, key: str, **values: Any) -> None:
        self.edit(key, lambda entry: {**entry, **values})

    def edit(self, key: str, change: Change) -> dict[str, Any]:
        old, entry = _lookup(self._data, key)
        new = dict(change(dict(entry)))
        self._data.pop(old, None)
        self._data[state_key(key)] = new
        return dict(new)


def default_state_path() -> Path:
    env = os.environ.get(STATE_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(base) / "balloonctl" / "state.json"


@contextlib.contextmanager
def private_state(path: Path) -> Iterator[None]:
    """Point ``default_state_path()`` (``$BALLOONCTL_STATE``) at ``path`` while the block
    runs: ``demo``'s simulated VMs stay out of the user's state file."""
    old = os.environ.get(STATE_ENV)
    os.environ[STATE_ENV] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(STATE_ENV, None)
        else:
            os.environ[STATE_ENV] = old


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _parse(raw: bytes, path: str) -> dict[str, dict[str, Any]]:
    """The entries of a state file's bytes.

    Raises:
        StateFileError: not UTF-8, not JSON, or not an object of objects.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StateFileError(path, f"is not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        return {}  # an empty file (an older balloonctl killed mid-write) remembers nothing
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StateFileError(path, f"is not valid JSON (line {exc.lineno} column "
                                   f"{exc.colno}: {exc.msg})") from None
    except (ValueError, RecursionError):
        raise StateFileError(path, "is not valid JSON") from None
    if not isinstance(doc, dict):
        raise StateFileError(path, f"expected a JSON object of VM entries, got "
                                   f"{type(doc).__name__}")
    data: dict[str, dict[str, Any]] = {}
    for key, entry in doc.items():
        if not isinstance(entry, dict):
            raise StateFileError(path, f"the entry for {key!r} is not a JSON object")
        # keys before real paths: //run/x.qmp and /run/x.qmp are one VM
        data.setdefault(state_key(key) if key.startswith("/") else key, entry)
    return data


def _create_temp(directory: Path, name: str) -> tuple[int, str]:
    """A new file ``.<name>.<pid>.<n>.tmp`` in ``directory``, mode 0600, opened for writing
    (``tempfile`` would cost every balloonctl run its import).

    Raises:
        OSError: it cannot be created.
    """
    while True:
        path = str(directory / f".{name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            continue
        return fd, path


def _prune(data: dict[str, dict[str, Any]], keep: str) -> bool:
    """Drop the entries of unix sockets that are gone (their VM has exited); whether any
    was dropped."""
    dropped = False
    for key in list(data):
        if key != keep and key.startswith("/") and not os.path.exists(key):
            del data[key]
            dropped = True
    return dropped


# How long after its last change a file's identity alone (inode, size, times) is trusted:
# file times come from a coarse clock (a jiffy on Linux, 2 s on FAT), so two writes within
# one tick, of the same size, into a reused inode would look alike; 3 s later they cannot.
_SETTLED_NS = 3_000_000_000

_Stamp = tuple[int, int, int, int, int]


def _stamp(st: os.stat_result) -> _Stamp:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _settled(st: os.stat_result) -> bool:
    return time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > _SETTLED_NS


class _Version:
    """The last version of the file this store read or wrote: its identity, its bytes, its
    parsed entries (never mutated: readers copy what they change), and whether the identity
    alone may be trusted."""

    __slots__ = ("data", "raw", "settled", "stamp")

    def __init__(self, stamp: _Stamp, raw: bytes, data: dict[str, dict[str, Any]],
                 settled: bool) -> None:
        self.stamp, self.raw, self.data, self.settled = stamp, raw, data, settled


class FileStore:
    """State persisted in a JSON file shared by every balloonctl process of a user.

    ``strict`` raises ``StateFileError`` for a file that cannot be used; otherwise that error
    is logged once and the store goes on in memory (see the module docstring).
    """

    def __init__(self, path: Path | None = None, *, strict: bool = False) -> None:
        self.path = path or default_state_path()
        self.strict = strict
        self.problem: StateFileError | None = None  # why the file is no longer used
        self._memory: MemoryStore | None = None  # where a non-strict store went on
        self._version: _Version | None = None  # the file as last read or written

    def get(self, key: str) -> dict[str, Any]:
        """The entry for ``key`` ({} when none).

        Raises:
            StateFileError: (only when ``strict``) the file cannot be read.
        """
        if self._memory is not None:
            return self._memory.get(key)
        try:
            return dict(_lookup(self._read(), key)[1])
        except StateFileError as exc:
            self._give_up(exc, {})
            return {}

    def update(self, key: str, **values: Any) -> None:
        self.edit(key, lambda entry: {**entry, **values})

    def edit(self, key: str, change: Change) -> dict[str, Any]:
        """Replace the entry with ``change(entry)`` in the file; return the new entry.

        Raises:
            StateFileError: (only when ``strict``) the file cannot be read or written; the
                file keeps what it had.
        """
        if self._memory is not None:
            return self._memory.edit(key, change)
        before: dict[str, dict[str, Any]] = {}
        try:
            target = self._target()
            with self._locked(target.parent):
                before = self._read()
                data = dict(before)
                old, entry = _lookup(data, key)
                new = dict(change(dict(entry)))
                real = state_key(key)
                data.pop(old, None)
                data[real] = new
                pruned = _prune(data, keep=real)
                if new != entry or old != real or pruned or old not in before:
                    self._write(target, data)
                return dict(new)
        except StateFileError as exc:
            self._give_up(exc, before)
            assert self._memory is not None
            return self._memory.edit(key, change)

    # ---- the file ---------------------------------------------------------------------

    def _read(self) -> dict[str, dict[str, Any]]:
        """The file's entries, {} when there is none yet. Opens it read-only.

        Raises:
            StateFileError: it cannot be read or parsed.
        """
        path = str(self.path)
        known = self._version
        if known is not None and known.settled:
            with contextlib.suppress(OSError):
                if _stamp(os.stat(path)) == known.stamp:
                    return known.data  # unchanged and settled: no read, no parse
        try:
            # O_NONBLOCK: a FIFO in its place must not hang balloonctl
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            if os.path.islink(path):
                raise StateFileError(path, f"is a symlink to {os.readlink(path)}, "
                                           "which does not exist") from None
            return {}
        except NotADirectoryError:
            raise StateFileError(path, "a component of the path is not a directory") from None
        except OSError as exc:
            raise StateFileError(path, f"cannot be read: {_why(exc)}") from None
        st = os.fstat(fd)
        mode = st.st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise StateFileError(path, "is a directory, not a file" if stat.S_ISDIR(mode)
                                 else "is not a regular file")
        with os.fdopen(fd, "rb") as fh:
            try:
                raw = fh.read(_MAX_FILE_BYTES + 1)
            except OSError as exc:
                raise StateFileError(path, f"cannot be read: {_why(exc)}") from None
        if len(raw) > _MAX_FILE_BYTES:
            raise StateFileError(path, f"is larger than {_MAX_FILE_BYTES} bytes: "
                                       "not a balloonctl state file")
        # the same bytes as last time: the same entries, without parsing or resolving keys
        data = known.data if known is not None and known.raw == raw else _parse(raw, path)
        self._version = _Version(_stamp(st), raw, data, _settled(st))
        return data

    def _target(self) -> Path:
        """The file a write replaces: the path itself, or the file a symlink points to
        (replacing the symlink would move the state out of where the user put it).

        Raises:
            StateFileError: the directory cannot be created.
        """
        target = self.path
        if target.is_symlink():
            target = Path(os.path.realpath(target))
            if not target.exists():  # do not create directories where it points
                raise StateFileError(str(self.path), f"is a symlink to "
                                     f"{os.readlink(self.path)}, which does not exist")
        if not target.parent.is_dir():
            try:
                os.makedirs(target.parent, mode=0o700, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise StateFileError(str(self.path), "a component of the path is not a "
                                                     "directory") from None
            except OSError as exc:
                raise StateFileError(str(self.path), f"cannot create its directory "
                                                     f"{target.parent}: {_why(exc)}") from None
        return target

    @contextlib.contextmanager
    def _locked(self, directory: Path) -> Iterator[None]:
        """An exclusive lock among balloonctl writers of state files in ``directory``.

        The lock is on the directory, not the file: the file is replaced by every write.
        """
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise StateFileError(str(self.path), f"cannot open its directory: "
                                                 f"{_why(exc)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # also releases the lock

    def _write(self, target: Path, data: dict[str, dict[str, Any]]) -> None:
        """Replace ``target`` with ``data`` atomically: the old version stays until the new
        one is complete on disk. Called under the lock.

        Raises:
            StateFileError: the new version cannot be written (the old one is kept).
        """
        directory = target.parent
        for stale in directory.glob(f".{target.name}.*.tmp"):
            with contextlib.suppress(OSError):  # left by a writer killed mid-write
                stale.unlink()
        raw = json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")
        tmp: str | None = None
        try:
            fd, tmp = _create_temp(directory, target.name)
            with os.fdopen(fd, "wb") as fh:
                fh.write(raw)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
            tmp = None
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)  # the rename itself survives a crash
            finally:
                os.close(dir_fd)
            # Under the lock no one else writes: this is the version just written (the
            # stat after the rename, which changes the file's ctime).
            self._version = _Version(_stamp(os.stat(target)), raw, data, False)
        except OSError as exc:
            raise StateFileError(str(self.path), f"cannot be written: {_why(exc)} "
                                                 "(it keeps what it had)") from None
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def _give_up(self, exc: StateFileError, data: dict[str, dict[str, Any]]) -> None:
        """Strict: raise ``exc``. Otherwise warn once and go on in memory from ``data``."""
        if self.strict:
            raise exc
        self.problem = exc
        self._memory = MemoryStore(data)
        log.warning("%s; balloonctl goes on without it, and what this run sets (targets, "
                    "the hint) will not be remembered", exc)
