"""What every backend's client shares (``BalloonClient`` over QMP, ``LibvirtClient``): the
keyword arguments an inventory entry gives a client, how long an unreached target counts,
and the one-call snapshot that turns
any failure part-way into fields of a ``BalloonState`` instead of an exception.

Imports only the core, so a backend that does not speak QMP does not load qemu.qmp.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

from balloonctl.errors import (
    BadReply,
    BalloonError,
    ConnectFailed,
    Disconnected,
    NoBalloonDevice,
    QMPTimeout,
)
from balloonctl.model import BalloonState, VmRef

__all__ = ["TARGET_STALE_AFTER", "Snapshotting", "ref_settings", "take_snapshot"]

# A stored target that the VM has not reached this long after balloonctl set it is taken
# as unknown: something else (virsh, qmp-shell, another tool) has probably changed it.
TARGET_STALE_AFTER: Final = 120.0


def ref_settings(ref: VmRef) -> dict[str, Any]:
    """A client's keyword arguments that an inventory entry gives (name, guest agent socket,
    limits, hint preferences); ``from_ref`` of every client starts from them."""
    return {"name": ref.name, "qga": ref.qga, "minimum": ref.minimum, "maximum": ref.maximum,
            "hint": ref.hint, "hint_mount_cgroup": bool(ref.hint_mount_cgroup)}


class Snapshotting(Protocol):
    """What ``take_snapshot`` needs of a VM's client (``BalloonClient``, ``LibvirtClient``)."""

    @property
    def name(self) -> str: ...

    @property
    def address(self) -> str: ...

    def last_target(self) -> int | None: ...

    async def connect(self) -> None: ...


async def take_snapshot(client: Snapshotting,
                        fill: Callable[[dict[str, Any]], Awaitable[None]]) -> BalloonState:
    """A ``BalloonState`` of ``client``'s VM: connect, then ``fill(found)`` adds the fields
    it reads. Never raises ``BalloonError``: a failure part-way keeps the fields found so
    far and becomes ``reachable``/``error``/``error_kind`` (``has_device`` False for
    ``NoBalloonDevice``; a lost connection or a timeout is unreachable)."""
    found: dict[str, Any] = {"name": client.name, "qmp": client.address,
                             "target": client.last_target()}
    try:
        await client.connect()
    except BalloonError as exc:  # a bad qmp_capabilities reply is an answer, though
        return _failed(found, exc, reachable=isinstance(exc, BadReply))
    try:
        await fill(found)
    except NoBalloonDevice as exc:
        return _failed(found, exc, reachable=True, has_device=False)
    except (ConnectFailed, Disconnected, QMPTimeout) as exc:
        return _failed(found, exc, reachable=False)
    except BalloonError as exc:
        return _failed(found, exc, reachable=True)
    return BalloonState(**found, taken_at=time.time())


def _failed(found: dict[str, Any], exc: BalloonError, *, reachable: bool,
            **more: Any) -> BalloonState:
    return BalloonState(**{**found, **more, "reachable": reachable, "error": exc.message,
                           "error_kind": type(exc).__name__, "taken_at": time.time()})
