"""Where a fake VM's sockets go: names that stay inside their directory, paths that fit in a
unix socket address, and a directory that is gone again when the fake made it.

Everything here is checked before anything is created, so a refused fleet leaves nothing
behind: no sockets, no simulated host, no directory.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from balloonctl.text import escape_text

__all__ = [
    "SOCKET_PATH_MAX",
    "UNIX_PATH_MAX",
    "SocketPathTooLong",
    "check_socket_path",
    "check_vm_name",
    "name_problem",
    "socket_dir",
]

T = TypeVar("T")

# sizeof(struct sockaddr_un.sun_path) on Linux (<linux/un.h>), the terminating NUL included.
UNIX_PATH_MAX = 108
# The longest path that leaves room for the NUL. Linux would bind a path of all 108 bytes,
# but QEMU (and any C client using strlen) refuses it: "UNIX socket path ... is too long".
SOCKET_PATH_MAX = UNIX_PATH_MAX - 1


class SocketPathTooLong(OSError):
    """A socket path longer than ``SOCKET_PATH_MAX`` bytes; nothing was created."""


def name_problem(text: str) -> str | None:
    """Why ``text`` is refused as (part of) the name of a VM an operator asks for
    (``balloonctl fake --prefix``), or None when it is fine.

    A VM ``NAME`` is served as ``DIR/NAME.qmp``: a ``/`` or ``..`` would aim the socket
    outside ``DIR``, and a NUL or control character cannot be passed or printed safely.
    """
    if "/" in text:
        return "contains '/'"
    if ".." in text:
        return "contains '..'"
    if "\0" in text:
        return "contains a NUL character"
    if escape_text(text) != text:
        return "contains a control character"
    return None


def check_vm_name(name: str) -> None:
    """Check that ``name`` makes one file name in the VM's directory.

    Control characters are allowed: tests serve hostile socket names on purpose, to see
    them printed escaped. Operators' names go through ``name_problem`` first.

    Raises:
        ValueError: ``name`` is empty, or contains a ``/`` or a NUL.
    """
    for bad, problem in (("/", "contains '/'"), ("\0", "contains a NUL character")):
        if bad in name:
            raise ValueError(f"VM name '{escape_text(name)}' {problem}")
    if not name:
        raise ValueError("VM name '' is empty")


def check_socket_path(path: Path) -> None:
    """Raises: SocketPathTooLong: ``path`` (as bound: ``str(path)``, in bytes) is longer than
    a unix socket address holds."""
    size = len(os.fsencode(str(path)))
    if size > SOCKET_PATH_MAX:
        raise SocketPathTooLong(
            f"socket path {escape_text(str(path))} is {size} bytes; a unix socket path holds "
            f"at most {SOCKET_PATH_MAX} (sun_path is {UNIX_PATH_MAX} bytes with the NUL)"
        )


def _missing(directory: Path) -> list[Path]:
    """``directory`` and those of its parents that do not exist, deepest first."""
    missing: list[Path] = []
    for path in (directory, *directory.parents):
        if path.exists() or path.is_symlink():
            break
        missing.append(path)
    return missing


def _remove_empty(made: list[Path]) -> None:
    """rmdir what we made, deepest first; stop at the first that is not empty (or gone)."""
    for path in made:
        try:
            path.rmdir()
        except FileNotFoundError:
            continue
        except OSError:
            return


@contextlib.contextmanager
def socket_dir(
    directory: Path | None, make: Callable[[Path], T], *, temp_prefix: str = "balloonctl-fake-"
) -> Iterator[tuple[Path, T]]:
    """``(DIR, make(DIR))`` with ``DIR`` ready to serve in: ``directory`` (created with its
    missing parents), or a new temporary directory when it is None.

    ``make`` builds what will serve there (a ``FakeFleet``) and checks it; with a
    ``directory`` it runs before anything is created. On exit, and when ``make`` fails, the
    directories this created are removed if they are empty (a fleet removes its own sockets
    and host files when it stops; anything else in them stays).

    Raises:
        OSError: the directory cannot be created.
        Exception: whatever ``make`` raises.
    """
    made: list[Path] = []
    try:
        if directory is None:
            where = Path(tempfile.mkdtemp(prefix=temp_prefix))
            made.append(where)
            built = make(where)
        else:
            where = directory
            built = make(where)
            made.extend(_missing(where))
            where.mkdir(parents=True, exist_ok=True)
        yield where, built
    finally:
        _remove_empty(made)
