"""What the dashboard's requests do, as one call per VM: each call runs in the App's action
worker (``DashboardApp._act``) and returns the result line for the event log, or raises a
``BalloonError`` that becomes a failure line. The App only routes messages to these."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from balloonctl.errors import BalloonError
from balloonctl.units import format_size
from tui.targets import absolute

if TYPE_CHECKING:
    from balloonctl.auto import AutoController
    from balloonctl.fleet import DataSource

__all__ = ["Calls", "auto_host_calls", "hint_calls", "reclaim_calls", "stats_calls",
           "target_calls"]

Calls = dict[str, Callable[[], Awaitable[str]]]


def target_calls(source: DataSource, targets: Mapping[str, int], *, force: bool,
                 lock: Callable[[str], asyncio.Lock]) -> Calls:
    """Set each VM's target; ``lock(name)`` keeps one VM's targets in the order asked."""

    def call(name: str, target: int) -> Callable[[], Awaitable[str]]:
        async def run() -> str:
            async with lock(name):
                sent = await source.set_target(name, absolute(target), force=force)
            return f"target set to {format_size(sent)}"

        return run

    return {n: call(n, t) for n, t in targets.items()}


def hint_calls(source: DataSource, hints: Mapping[str, bool]) -> Calls:
    """Turn each VM's cache-first hint on or off."""

    def call(name: str, enabled: bool) -> Callable[[], Awaitable[str]]:
        async def run() -> str:
            hint = await source.set_hint(name, enabled)
            done = f"hint {'on' if hint.enabled else 'off'} ({hint.mode.value} mode)"
            return f"{done}: {hint.detail}" if hint.detail else done

        return run

    return {n: call(n, e) for n, e in hints.items()}


def stats_calls(source: DataSource, names: Iterable[str], interval: int) -> Calls:
    """Set each VM's stats polling interval."""

    def call(name: str) -> Callable[[], Awaitable[str]]:
        async def run() -> str:
            await source.enable_stats(name, interval)
            return f"stats polling every {interval}s"

        return run

    return {n: call(n) for n in names}


def reclaim_calls(auto: AutoController | None, source: object,
                  names: Iterable[str]) -> Calls | None:
    """Take each VM back from another writer, so auto manages it again: the dashboard's own
    ``auto``, else the source's services (``MultiHost.reclaim``, ``HttpSource.reclaim``:
    ``POST /v1/vms/NAME/reclaim``; a service without auto answers with an error). None
    when there is neither."""
    remote: Callable[[str], Awaitable[bool]] | None = getattr(source, "reclaim", None)
    if auto is None and remote is None:
        return None

    async def take_back(name: str) -> bool:
        if auto is None:
            assert remote is not None
            return await remote(name)
        result = (await auto.reclaim([name]))[name]
        if isinstance(result, BalloonError):
            raise result
        return result

    def call(name: str) -> Callable[[], Awaitable[str]]:
        async def run() -> str:
            return "taken back: auto manages it again" if await take_back(name) else \
                "not marked as moved by another writer"

        return run

    return {n: call(n) for n in names}


def auto_host_calls(source: object, names: Sequence[str] | None, on: bool) -> Calls | None:
    """Switch auto on or off on the services of the hosts of ``names`` (None: every host),
    one call per host (``MultiHost.set_auto``: a service switches all its VMs); None when
    the source has no services to switch."""
    set_auto: Callable[[str, bool], Awaitable[bool]] | None = getattr(source, "set_auto", None)
    host_of: Callable[[str], str] | None = getattr(source, "host_of", None)
    labels: Sequence[str] = getattr(source, "labels", ())
    if set_auto is None or host_of is None or not labels:
        return None
    hosts = list(labels) if names is None else list(dict.fromkeys(host_of(n) for n in names))

    def call(label: str) -> Callable[[], Awaitable[str]]:
        async def run() -> str:
            enabled = await set_auto(label, on)
            return f"auto {'on' if enabled else 'off'} (every VM of this host's service)"

        return run

    return {h: call(h) for h in hosts}
