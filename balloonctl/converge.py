"""Sending a balloon target and waiting for the balloon to reach it, whatever reaches the VM.

``send_target`` is the one path behind ``BalloonClient.set_target`` (QMP ``balloon``) and
``LibvirtClient.set_target`` (``virDomainSetMemoryFlags``): resolve and check the target,
reclaim clean cache alongside an inflation when the hint asks, remember it, journal it.

``wait_for_target`` is the one loop behind ``BalloonClient.wait_for_target`` (QMP
``query-balloon``) and ``LibvirtClient.wait_for_target`` (libvirt's memory stats): it polls
``actual``, and when the balloon stops moving or time runs out, tells a guest without its
balloon driver from a stuck balloon from one that is merely slow.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Final, Protocol

from balloonctl.errors import DriverNotReady, StuckBalloon, WaitTimeout
from balloonctl.model import CONVERGED_TOLERANCE, GuestStats, TargetChange
from balloonctl.units import TargetSpec, format_size

if TYPE_CHECKING:
    from balloonctl.targets import RememberedTargets

__all__ = ["POLL_INTERVAL", "Converging", "Reclaiming", "Sending", "send_target",
           "wait_for_target"]

# How often wait_for_target polls actual.
POLL_INTERVAL: Final = 0.05


class Converging(Protocol):
    """What the wait needs of a VM's client (``BalloonClient`` and ``LibvirtClient`` fit)."""

    async def query_actual(self) -> int: ...

    async def stats(self) -> GuestStats: ...

    async def current_target(self, *, actual: int | None = None,
                             guest_ram: int | None = None) -> int | None: ...


async def wait_for_target(client: Converging, target: int, *, vm: str | None,
                          timeout: float = 60.0,  # noqa: ASYNC109 - the contract's API
                          stall_timeout: float = 5.0,
                          progress: Callable[[int, int], None] | None = None) -> int:
    """Poll ``client.query_actual()`` until ``actual`` is within ``CONVERGED_TOLERANCE`` of
    ``target``; ``progress(actual, target)`` is called after every poll. On arrival the
    client's ``current_target`` notes that a remembered target was reached. Returns the final
    actual. ``vm`` is the name the errors carry.

    Raises:
        DriverNotReady: the guest driver never reported and ``actual`` does not move.
        StuckBalloon: ``actual`` has not moved for ``stall_timeout`` seconds.
        WaitTimeout: not converged within ``timeout`` seconds.
        (and what the client's calls raise)
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + timeout
    first_actual: int | None = None
    last_actual: int | None = None
    last_move = start
    while True:
        actual = await client.query_actual()
        now = loop.time()
        if progress is not None:
            progress(actual, target)
        if abs(actual - target) <= CONVERGED_TOLERANCE:
            await client.current_target(actual=actual)  # notes a remembered target reached
            return actual
        if first_actual is None:
            first_actual = actual
        if actual != last_actual:
            last_actual, last_move = actual, now
        stalled = now - last_move >= stall_timeout
        if stalled or now >= deadline:
            stats = await client.stats()
            if not stats.reported and actual == first_actual:
                raise DriverNotReady(
                    "the guest has not loaded the virtio_balloon driver (no stats ever "
                    f"reported) and actual stays at {format_size(actual)}", vm=vm)
            left = format_size(abs(actual - target))
            if stalled:
                raise StuckBalloon(
                    f"balloon stuck at {format_size(actual)}, {left} short of the target "
                    f"{format_size(target)}: no movement for {stall_timeout:g}s (the guest "
                    "may be unable to free more memory)",
                    vm=vm, actual=actual, target=target)
            raise WaitTimeout(
                f"balloon did not reach {format_size(target)} within {timeout:g}s "
                f"(actual {format_size(actual)}, {left} to go)",
                vm=vm, actual=actual, target=target)
        await asyncio.sleep(min(POLL_INTERVAL, max(0.0, deadline - now)))


class Reclaiming(Protocol):
    """The cache-first part ``send_target`` needs (``balloonctl.cachefirst.CacheFirst``)."""

    def reclaiming(self, inflation: int) -> AbstractAsyncContextManager[None]: ...


class Sending(Protocol):
    """What ``send_target`` needs of a VM's client (``BalloonClient`` and ``LibvirtClient``)."""

    @property
    def name(self) -> str: ...

    @property
    def address(self) -> str: ...

    @property
    def recorder(self) -> Callable[[TargetChange], None] | None: ...

    @property
    def targets(self) -> RememberedTargets: ...

    @property
    def cache_first(self) -> Reclaiming: ...

    async def resolve_target(self, spec: TargetSpec | int, *, force: bool = False) -> int: ...

    async def query_actual(self) -> int: ...

    async def current_target(self, *, actual: int | None = None,
                             guest_ram: int | None = None) -> int | None: ...


async def send_target(client: Sending, spec: TargetSpec | int, *, force: bool, dry_run: bool,
                      record: bool, send: Callable[[int], Awaitable[None]]) -> int:
    """Resolve and check ``spec``; unless ``dry_run``, ``send(target)`` inside the hint's
    reclaim (an inflation of ``actual - target``), remember the target and give it to the
    client's ``recorder`` unless ``record`` is False. Returns the target in bytes.

    ``actual`` is read before anything is sent, so a VM without a balloon fails before the
    guest agent does any work.

    Raises:
        SizeError, UnsafeTarget (nothing was sent); what ``send`` and the client's reads
        raise; what ``recorder`` raises (the target was sent).
    """
    target = await client.resolve_target(spec, force=force)
    if dry_run:
        return target
    actual = await client.query_actual()
    previous: int | None = None
    recorder = client.recorder if record else None
    if recorder is not None:
        previous = await client.current_target(actual=actual)
        previous = actual if previous is None else previous
    async with client.cache_first.reclaiming(actual - target):
        await send(target)
    await client.targets.remember(target=target, target_at=time.time(), target_reached=False,
                                  target_from=actual)
    if recorder is not None:
        recorder(TargetChange(client.name, client.address, previous, target))
    return target
