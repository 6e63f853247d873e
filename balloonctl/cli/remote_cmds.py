"""``set``, ``hint`` and ``auto --reclaim`` through ``balloonctl serve`` (see
``cli.remote``): the same lines, errors and exit codes as when the CLI talks QMP itself."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from balloonctl.cli.remote import Endpoint, remote_each
from balloonctl.cli.set import SetResult
from balloonctl.errors import BalloonError, UsageError, WaitTimeout
from balloonctl.model import CONVERGED_TOLERANCE, HintState, validate_target
from balloonctl.units import TargetSpec, format_size

if TYPE_CHECKING:
    from balloonctl.http.client import HttpSource

__all__ = ["hint_through_service", "reclaim_through_service", "set_through_service"]

WAIT_POLL = 0.25  # seconds between looks at a VM while --wait waits through the service


async def _wait(source: HttpSource, name: str, target: int, limit: float) -> int:
    deadline = time.monotonic() + limit
    while True:
        state = await source.state(name)
        if state.actual is not None and abs(state.actual - target) <= CONVERGED_TOLERANCE:
            return state.actual
        if time.monotonic() >= deadline:
            shown = "unknown" if state.actual is None else format_size(state.actual)
            raise WaitTimeout(f"the balloon did not reach {format_size(target)} within "
                              f"{limit:g}s (actual {shown})", vm=name)
        await asyncio.sleep(WAIT_POLL)


async def set_through_service(eps: Sequence[Endpoint], names: Sequence[str], all_vms: bool,
                              spec: TargetSpec, *, force: bool, dry_run: bool,
                              wait: float | None) -> dict[str, SetResult | BalloonError]:
    """Set (or with ``dry_run`` only resolve and check) each selected VM's target; what
    ``balloonctl set`` reports for each VM (named ``HOST/VM`` with several services).

    Raises:
        UnknownVM, ConnectFailed...: as ``remote_each``.
    """

    async def one(source: HttpSource, name: str) -> SetResult:
        before = await source.state(name)
        if dry_run:
            if before.guest_ram is None or before.actual is None:
                raise UsageError("the VM's size is unknown (unreachable?)", vm=name)
            current = before.target if before.target is not None else before.actual
            target = validate_target(spec.resolve(guest_ram=before.guest_ram, current=current),
                                     guest_ram=before.guest_ram, minimum=before.floor,
                                     maximum=before.maximum, force=force, vm=name)
            sent = json.dumps({"execute": "balloon", "arguments": {"value": target}})
            return SetResult(name, target, before.actual, False, None,
                             f"{name}: would send {sent} ({format_size(target)})")
        target = await source.set_target(name, spec, force=force)
        if wait is None:
            actual = "unknown" if before.actual is None else format_size(before.actual)
            return SetResult(name, target, before.actual,
                             True, None, f"{name}: target {format_size(target)} "
                                         f"(actual {actual})")
        started = time.monotonic()
        final = await _wait(source, name, target, wait)
        took = time.monotonic() - started
        return SetResult(name, target, final, True, round(took, 3),
                         f"{name}: reached {format_size(final)} (target "
                         f"{format_size(target)}) in {took:.1f}s")

    results = await remote_each(eps, names, all_vms, one)
    return {k: v if isinstance(v, BalloonError) else _rename(v, k) for k, v in results.items()}


def _rename(result: SetResult, display: str) -> SetResult:
    """The result with its VM named as the user sees it (``HOST/VM`` with several hosts)."""
    if result.name == display:
        return result
    _, _, rest = result.line.partition(": ")
    return dataclasses.replace(result, name=display, line=f"{display}: {rest}")


async def hint_through_service(eps: Sequence[Endpoint], names: Sequence[str], all_vms: bool,
                               action: str) -> dict[str, HintState | BalloonError]:
    """``on``/``off``/``status`` of each selected VM's hint.

    Raises:
        UnknownVM, ConnectFailed...: as ``remote_each``.
    """

    async def one(source: HttpSource, name: str) -> HintState:
        if action == "status":
            return (await source.state(name)).hint
        return await source.set_hint(name, action == "on")

    return await remote_each(eps, names, all_vms, one)


async def reclaim_through_service(eps: Sequence[Endpoint], names: Sequence[str]
                                  ) -> dict[str, bool | BalloonError]:
    """Take each selected VM back from another writer on its service (``POST
    /v1/vms/NAME/reclaim``): True for each that was marked as moved by another writer.

    Raises:
        UnknownVM, ConnectFailed...: as ``remote_each``.
    """
    return await remote_each(eps, names, False, lambda source, name: source.reclaim(name))
