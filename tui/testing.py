"""A deterministic in-memory ``DataSource`` for snapshot tests, demos of the layout and benches.

Nothing here does I/O: snapshots return fixed ``BalloonState`` values taken at a fixed time.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console

from balloonctl.errors import UnknownVM
from balloonctl.model import (
    BalloonState,
    DeviceFeatures,
    GuestStats,
    HintMode,
    HintState,
    validate_target,
)
from balloonctl.units import GiB, MiB, TargetSpec

if TYPE_CHECKING:
    from textual.app import App
    from textual.pilot import Pilot

    from balloonctl.qmp import BalloonEvent

__all__ = ["FIXED_TIME", "StaticSource", "sample_states", "screen_text", "wait_until"]

FIXED_TIME = 1_790_000_000.0  # 2026-09-21T14:13:20Z; any fixed instant will do


def sample_states(n: int = 6, *, taken_at: float = FIXED_TIME) -> list[BalloonState]:
    """``n`` VMs showing every kind of row: healthy, converging, no driver, unreachable..."""
    states: list[BalloonState] = []
    for i in range(1, n + 1):
        name = f"vm{i}"
        ram = 2 * GiB
        actual = ram - (i % 4) * 256 * MiB
        stats = GuestStats(
            last_update=int(taken_at) - 1 - i % 3,
            free_memory=(200 + 37 * i) * MiB,
            disk_caches=(300 + 53 * i) * MiB,
            available_memory=(500 + 71 * i) * MiB,
            total_memory=actual,
            swap_in=0,
            swap_out=0,
        )
        state = BalloonState(
            name=name,
            qmp=f"/run/balloonctl/{name}.qmp",
            reachable=True,
            actual=actual,
            guest_ram=ram,
            target=actual,
            floor=256 * MiB,
            stats=stats,
            polling_interval=2,
            features=DeviceFeatures(False, True, False),
            hint=HintState(HintMode.AGENT, enabled=i % 2 == 0),
            taken_at=taken_at,
        )
        kind = i % 6
        if kind == 2:
            state = state.with_changes(target=actual - 512 * MiB)  # converging
        elif kind == 3:
            state = state.with_changes(stats=GuestStats(), polling_interval=0)  # no driver
        elif kind == 5:
            state = BalloonState(
                name=name, qmp=state.qmp, reachable=False,
                error=f"{name}: cannot connect to {state.qmp}: connection refused",
                error_kind="ConnectFailed", taken_at=taken_at,
            )
        if i == 7:  # polling on, but the guest stopped reporting
            state = state.with_changes(stats=GuestStats(
                last_update=int(taken_at) - 40, free_memory=stats.free_memory,
                disk_caches=stats.disk_caches, available_memory=stats.available_memory,
            ))
        elif i == 8:  # someone else holds the QMP socket
            state = BalloonState(
                name=name, qmp=state.qmp, reachable=False,
                error=f"{name}: no greeting from {state.qmp} within 3s: "
                "another QMP client holds the socket",
                error_kind="SocketBusy", taken_at=taken_at,
            )
        states.append(state)
    return states


class StaticSource:
    """A ``DataSource`` over fixed states. Actions change the states (targets land at once)
    and are recorded in ``calls``."""

    def __init__(self, states: Sequence[BalloonState]) -> None:
        self.states = {s.name: s for s in states}
        self.names: Sequence[str] = list(self.states)
        self.calls: list[tuple[str, str, Any]] = []
        self.closed = False

    def _get(self, name: str) -> BalloonState:
        try:
            return self.states[name]
        except KeyError:
            raise UnknownVM(f"no VM named {name!r}") from None

    async def snapshot(self) -> list[BalloonState]:
        return list(self.states.values())

    async def set_target(self, name: str, spec: TargetSpec, *, force: bool = False) -> int:
        state = self._get(name)
        ram = state.guest_ram or 0
        current = state.target or state.actual or 0
        target = validate_target(
            spec.resolve(guest_ram=ram, current=current), guest_ram=ram,
            minimum=state.floor, maximum=state.maximum, force=force, vm=name,
        )
        self.calls.append(("set_target", name, target))
        self.states[name] = state.with_changes(target=target, actual=target)
        return target

    async def set_hint(self, name: str, on: bool) -> HintState:
        state = self._get(name)
        hint = HintState(state.hint.mode, enabled=on)
        self.calls.append(("set_hint", name, on))
        self.states[name] = state.with_changes(hint=hint)
        return hint

    async def enable_stats(self, name: str, interval: int) -> None:
        self.calls.append(("enable_stats", name, interval))
        self.states[name] = self._get(name).with_changes(polling_interval=interval)

    async def events(self) -> AsyncIterator[tuple[str, BalloonEvent]]:
        return
        yield  # an async generator that ends at once

    async def close(self) -> None:
        self.closed = True


async def wait_until(
    pilot: Pilot[Any], predicate: Callable[[], bool], *, within: float = 10.0,
    what: str = "condition",
) -> None:
    """Let the app run until ``predicate()`` holds; fail after ``within`` seconds.

    Raises:
        AssertionError: the deadline passed first.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within:g}s waiting for {what}")
        await pilot.pause(0.02)


def screen_text(app: App[Any]) -> list[str]:
    """The app's screen as plain text, one string per terminal line (what the user sees,
    as ``export_screenshot`` renders it, without the SVG)."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True,
                      color_system="truecolor", record=True, legacy_windows=False,
                      safe_box=False)
    update = app.screen._compositor.render_update(
        full=True, screen_stack=app._background_screens
    )
    console.print(update)
    lines = console.export_text(styles=False).split("\n")
    return [line.replace("\xa0", " ") for line in lines[:height]]
