"""Who holds a unix socket: the processes connected to the sockets its server accepted.

A QMP socket serves one client at a time; when it is busy, the operator wants to know who
holds it. Linux tells, as far as the host lets us see: the kernel's sock_diag netlink
interface (what ``ss -xp`` uses) lists every unix socket with its bound file and its peer;
``/proc/PID/fd`` links (readable for our own processes, or as root) map a peer socket to a
process, and ``/proc/PID/cmdline`` names it. Anything not visible is simply left out: this
never raises.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from balloonctl.text import escape_text

__all__ = ["Holder", "describe_holders", "socket_holders"]

_SOCK_DIAG_BY_FAMILY: Final = 20
_NLM_F_REQUEST: Final = 0x1
_NLM_F_DUMP: Final = 0x300
_NLMSG_ERROR: Final = 2
_NLMSG_DONE: Final = 3
_UDIAG_SHOW_VFS: Final = 0x2
_UDIAG_SHOW_PEER: Final = 0x4
_UNIX_DIAG_VFS: Final = 1
_UNIX_DIAG_PEER: Final = 2
_NETLINK_SOCK_DIAG: Final = 4
_CMDLINE_SHOWN: Final = 80


@dataclass(frozen=True, slots=True)
class Holder:
    """A process connected to the socket. ``cmdline`` is escaped and cut for display."""

    pid: int
    cmdline: str

    @property
    def balloonctl(self) -> bool:
        """The process is balloonctl itself (a ``watch``, a ``--hold`` dashboard...)."""
        return self.cmdline.split(" ")[0] == "balloonctl"


def _peers_of(st_ino: int) -> list[int] | None:
    """Inodes of the peers of the sockets bound to the file with inode ``st_ino`` (the
    clients of its server); None when sock_diag is not available."""
    try:
        nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG)
    except (OSError, AttributeError):
        return None
    peers: list[int] = []
    with nl:
        nl.settimeout(1.0)
        req = struct.pack("=BBHIIIII", socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0,
                          _UDIAG_SHOW_VFS | _UDIAG_SHOW_PEER, 0xFFFFFFFF, 0xFFFFFFFF)
        header = struct.pack("=IHHII", 16 + len(req), _SOCK_DIAG_BY_FAMILY,
                             _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0)
        try:
            nl.send(header + req)
            while True:
                data = nl.recv(65536)
                if not data:
                    return peers
                offset = 0
                while offset + 16 <= len(data):
                    length, kind = struct.unpack_from("=IH", data, offset)
                    if kind == _NLMSG_DONE:
                        return peers
                    if kind == _NLMSG_ERROR or length < 16:
                        return None
                    found = _parse_diag(data[offset + 16:offset + length], st_ino)
                    if found is not None:
                        peers.append(found)
                    offset += (length + 3) & ~3
        except OSError:
            return None


def _parse_diag(msg: bytes, st_ino: int) -> int | None:
    """One unix_diag_msg: its peer's inode if it is bound to ``st_ino`` and connected."""
    vfs_ino: int | None = None
    peer: int | None = None
    offset = 16  # struct unix_diag_msg
    while offset + 4 <= len(msg):
        length, kind = struct.unpack_from("=HH", msg, offset)
        if length < 4:
            break
        if kind == _UNIX_DIAG_VFS and length >= 12:
            (vfs_ino,) = struct.unpack_from("=I", msg, offset + 4)
        elif kind == _UNIX_DIAG_PEER and length >= 8:
            (peer,) = struct.unpack_from("=I", msg, offset + 4)
        offset += (length + 3) & ~3
    if vfs_ino == st_ino & 0xFFFFFFFF and peer:
        return peer
    return None


def _processes_with(inodes: set[int]) -> dict[int, int]:
    """socket inode -> pid, for the processes whose fds we may read."""
    wanted = {f"socket:[{ino}]": ino for ino in inodes}
    found: dict[int, int] = {}
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return found
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link in wanted:
                found[wanted[link]] = pid
        if len(found) == len(wanted):
            break
    return found


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    args = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    # "python -m balloonctl watch", "python3 .venv/bin/balloonctl watch" and
    # ".venv/bin/balloonctl watch" all read "balloonctl watch"
    if len(args) > 1 and os.path.basename(args[0]).startswith("python"):
        args = args[2:] if args[1] == "-m" else args[1:]
    if args:
        args[0] = os.path.basename(args[0])
    text = " ".join(args)
    if len(text) > _CMDLINE_SHOWN:
        text = text[:_CMDLINE_SHOWN] + "..."
    return escape_text(text)


def socket_holders(path: str, *, mine: socket.socket | None = None) -> list[Holder] | None:
    """The processes connected to the unix socket file ``path``, other than ``mine`` (our
    own connection). None when the host does not let us look; a holder whose process is
    not visible to us is left out."""
    try:
        st_ino = os.stat(path).st_ino
    except OSError:
        return None
    peers = _peers_of(st_ino)
    if peers is None:
        return None
    own: int | None = None
    if mine is not None:
        try:
            own = os.fstat(mine.fileno()).st_ino
        except OSError:
            own = None
    others = {p for p in peers if p != own}
    pids = _processes_with(others)
    return [Holder(pid, _cmdline(pid)) for pid in sorted(set(pids.values()))]


def describe_holders(holders: list[Holder] | None) -> str | None:
    """A phrase naming who holds the socket ("another balloonctl, pid 12 (balloonctl watch
    vm1)"), or None when nobody is visible."""
    if not holders:
        return None
    parts = []
    for h in holders:
        who = "another balloonctl" if h.balloonctl else "another QMP client"
        parts.append(f"{who}, pid {h.pid} ({h.cmdline})")
    return "; ".join(parts)
