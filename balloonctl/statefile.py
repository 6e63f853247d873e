"""The disk side of the state file (``balloonctl.store``): reading its bytes, where a write
goes, the writers' lock, the atomic replace, the temp files a killed writer leaves, and a
file's identity. Knows nothing of entries.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from balloonctl.errors import StateFileError

__all__ = ["Stamp", "Version", "locked", "read_file", "remove_leftovers",
           "replace_atomically", "settled", "stamp", "why", "write_target"]

# Bigger than any state balloonctl writes (a few hundred bytes per VM): not a state file.
MAX_FILE_BYTES = 16 * 1024 * 1024

Stamp = tuple[int, int, int, int, int]

# How long after its last change a file's identity alone (inode, size, times) is trusted:
# file times come from a coarse clock (a jiffy on Linux, 2 s on FAT), so two writes within
# one tick, of the same size, into a reused inode would look alike; 3 s later they cannot.
_SETTLED_NS = 3_000_000_000


def stamp(st: os.stat_result) -> Stamp:
    """A file's identity: device, inode, size, mtime, ctime."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def settled(st: os.stat_result) -> bool:
    """Whether the file's identity alone may be trusted (it last changed over 3 s ago)."""
    return time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > _SETTLED_NS


class Version:
    """The last version of a file a store read or wrote: its identity, its bytes, its
    parsed entries (never mutated: readers copy what they change), and whether the identity
    alone may be trusted."""

    __slots__ = ("data", "raw", "settled", "stamp")

    def __init__(self, stamp: Stamp, raw: bytes, data: dict[str, dict[str, Any]],
                 settled: bool) -> None:
        self.stamp, self.raw, self.data, self.settled = stamp, raw, data, settled


def why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def read_file(path: str) -> tuple[os.stat_result, bytes] | None:
    """The state file's ``stat`` and bytes, None when there is none. Opens it read-only.

    Raises:
        StateFileError: it cannot be read, is not a regular file, or is too big.
    """
    try:
        # O_NONBLOCK: a FIFO in its place must not hang balloonctl
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        if os.path.islink(path):
            raise StateFileError(path, f"is a symlink to {os.readlink(path)}, "
                                       "which does not exist") from None
        return None
    except NotADirectoryError:
        raise StateFileError(path, "a component of the path is not a directory") from None
    except OSError as exc:
        raise StateFileError(path, f"cannot be read: {why(exc)}") from None
    st = os.fstat(fd)
    mode = st.st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise StateFileError(path, "is a directory, not a file" if stat.S_ISDIR(mode)
                             else "is not a regular file")
    with os.fdopen(fd, "rb") as fh:
        try:
            raw = fh.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise StateFileError(path, f"cannot be read: {why(exc)}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise StateFileError(path, f"is larger than {MAX_FILE_BYTES} bytes: "
                                   "not a balloonctl state file")
    return st, raw


def write_target(path: Path) -> Path:
    """The file a write of ``path`` replaces: the path itself, or the file a symlink points
    to (replacing the symlink would move the state out of where the user put it); its
    directory is created (0700) when missing.

    Raises:
        StateFileError: a dangling symlink, or the directory cannot be created.
    """
    target = path
    if target.is_symlink():
        target = Path(os.path.realpath(target))
        if not target.exists():  # do not create directories where it points
            raise StateFileError(str(path), f"is a symlink to {os.readlink(path)}, "
                                            "which does not exist")
    if not target.parent.is_dir():
        try:
            os.makedirs(target.parent, mode=0o700, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise StateFileError(str(path), "a component of the path is not a "
                                            "directory") from None
        except OSError as exc:
            raise StateFileError(str(path), f"cannot create its directory "
                                            f"{target.parent}: {why(exc)}") from None
    return target


@contextlib.contextmanager
def locked(directory: Path, path: Path) -> Iterator[None]:
    """An exclusive ``flock`` among balloonctl writers of state files in ``directory``, held
    while the block runs (on the directory, not the file: every write replaces the file).

    Raises:
        StateFileError: the directory cannot be opened (``path`` names the state file).
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise StateFileError(str(path), f"cannot open its directory: {why(exc)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # also releases the lock


def _temp_prefix(target: Path) -> str:
    return f".{target.name}."


def _create_temp(target: Path) -> tuple[int, str]:
    """A new file ``.<name>.<pid>.<n>.tmp`` beside ``target``, mode 0600, opened for writing
    (``tempfile`` would cost every balloonctl run its import).

    Raises:
        OSError: it cannot be created.
    """
    while True:
        path = str(target.parent / f"{_temp_prefix(target)}{os.getpid()}."
                                   f"{time.monotonic_ns()}.tmp")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            continue
        return fd, path


def remove_leftovers(target: Path) -> None:
    """Remove the temp files writers killed mid-write left beside ``target`` (one listing
    of the directory, names compared as strings). Call it under the lock."""
    prefix = _temp_prefix(target)
    try:
        names = os.listdir(target.parent)
    except OSError:
        return
    for name in names:
        if name.startswith(prefix) and name.endswith(".tmp"):
            with contextlib.suppress(OSError):
                os.unlink(target.parent / name)


def replace_atomically(target: Path, raw: bytes) -> os.stat_result:
    """Replace ``target`` with ``raw``: a temp file in its directory, fsync, rename, fsync of
    the directory, so the old version stays until the new one is complete on disk. Returns
    the new file's ``stat`` (taken after the rename, which changes its ctime). Call it
    under the lock.

    Raises:
        OSError: the new version cannot be written (the old one is kept, no temp file left).
    """
    tmp: str | None = None
    try:
        fd, tmp = _create_temp(target)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        tmp = None
        dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)
        return os.stat(target)
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
