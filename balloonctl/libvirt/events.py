"""A libvirt domain's events as ``BalloonEvent``s (``LibvirtClient.events``).

libvirt calls back on its own event thread (``binding``); each callback hands its event to
the asyncio loop, into a bounded queue read by the iterator.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final

from balloonctl.errors import DomainNotRunning, LibvirtUnavailable
from balloonctl.libvirt import binding
from balloonctl.qmpsession import EVENT_BUFFER, BalloonEvent
from balloonctl.units import KiB

if TYPE_CHECKING:
    from balloonctl.libvirt.client import LibvirtClient

__all__ = ["CLOSED", "domain_events"]

# virDomainEventType, and virDomainEventStoppedDetailType for STOPPED.
_LIFECYCLE: Final = ("DEFINED", "UNDEFINED", "STARTED", "SUSPENDED", "RESUMED", "STOPPED",
                     "SHUTDOWN", "PMSUSPENDED", "CRASHED")
_STOPPED: Final = ("shutdown", "destroyed", "crashed", "migrated", "saved", "failed",
                   "from-snapshot")
_ENDS_RUN: Final = frozenset({"UNDEFINED", "STOPPED"})
CLOSED: Final = object()  # close() ended the stream
_LOST: Final = object()  # the connection to libvirtd closed


async def domain_events(client: LibvirtClient) -> AsyncIterator[BalloonEvent]:
    """The domain's events as ``BalloonEvent``: ``BALLOON_CHANGE`` (``actual`` in
    bytes, as QEMU's) and lifecycle changes as ``DOMAIN_<EVENT>`` (``detail`` says
    more, e.g. ``DOMAIN_STOPPED`` ``destroyed``). Notifications only. At most
    ``EVENT_BUFFER`` unread events are kept (oldest dropped). Ends quietly on ``close()``.

    Raises:
        DomainNotRunning: the domain stopped (after its DOMAIN_STOPPED event).
        LibvirtUnavailable: the connection to libvirtd closed.
        and what ``connect`` raises.
    """
    await client.connect()
    libvirt = binding.load()
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    conn, dom = client.connection, client.domain_object()

    def put(item: object) -> None:
        while queue.qsize() >= EVENT_BUFFER:
            queue.get_nowait()
        queue.put_nowait(item)

    def deliver(item: object) -> None:  # libvirt's event thread
        try:
            loop.call_soon_threadsafe(put, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    def on_balloon(_c: Any, _d: Any, actual_kib: int, _o: object) -> None:
        deliver(BalloonEvent("BALLOON_CHANGE", {"actual": int(actual_kib) * KiB},
                             time.time()))

    def on_lifecycle(_c: Any, _d: Any, event: int, detail: int, _o: object) -> None:
        kind = _LIFECYCLE[event] if 0 <= event < len(_LIFECYCLE) else str(event)
        what: str | int = detail
        if kind == "STOPPED" and 0 <= detail < len(_STOPPED):
            what = _STOPPED[detail]
        deliver(BalloonEvent(f"DOMAIN_{kind}", {"detail": what}, time.time()))

    def register() -> list[int]:
        return [
            conn.domainEventRegisterAny(dom, libvirt.VIR_DOMAIN_EVENT_ID_BALLOON_CHANGE,
                                        on_balloon, None),
            conn.domainEventRegisterAny(dom, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                        on_lifecycle, None),
        ]

    def deregister(ids: list[int]) -> None:
        for callback_id in ids:
            try:
                conn.domainEventDeregisterAny(callback_id)
            except libvirt.libvirtError:
                pass  # the connection is gone, and its callbacks with it

    ids = await client.blocking(register, op="domainEventRegisterAny")
    cancel = binding.on_close(conn, lambda: deliver(_LOST))
    client.streams.add(queue)
    try:
        # Never trust events alone: a stop between connect() and registering is missed.
        if not await client.blocking(dom.isActive, op="isActive"):
            raise DomainNotRunning(f"domain {client.domain!r} stopped", vm=client.vm)
        while True:
            item = await queue.get()
            if item is CLOSED:
                return
            if item is _LOST:
                client.let_go()
                raise LibvirtUnavailable(f"libvirtd closed the connection {client.uri}",
                                         vm=client.vm)
            assert isinstance(item, BalloonEvent)
            yield item
            if item.name.removeprefix("DOMAIN_") in _ENDS_RUN:
                client.let_go()
                raise DomainNotRunning(
                    f"domain {client.domain!r} stopped ({item.data.get('detail')})",
                    vm=client.vm)
    finally:
        client.streams.discard(queue)
        cancel()
        await asyncio.shield(asyncio.to_thread(deregister, ids))

