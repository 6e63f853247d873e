"""SVG snapshots of the dashboard over fixed data (fixed states, fixed clock, fixed host
memory). Update deliberately with ``pytest tests/test_tui_snapshots.py --snapshot-update``
and review the SVGs in the diff."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from tui.app import DashboardApp
from tui.testing import FIXED_TIME, StaticSource, sample_states, wait_until

SIZE = (160, 40)
SnapCompare = Callable[..., bool]


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DashboardApp]:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 33554432 kB\nMemFree: 4194304 kB\nMemAvailable: 20971520 kB\n")
    monkeypatch.setenv("TZ", "UTC")  # the event log shows local time
    time.tzset()
    # One poll only (an hour between polls): later polls would add swap rates.
    yield DashboardApp(
        StaticSource(sample_states(8)), interval=3600, meminfo=meminfo,
        clock=lambda: FIXED_TIME,
    )
    monkeypatch.undo()
    time.tzset()


def settled(*keys: str, polls: int = 1) -> Callable[[Pilot[Any]], Any]:
    """Wait for the first poll and host memory, press ``keys``, wait for ``polls`` polls."""

    async def run_before(pilot: Pilot[Any]) -> None:
        app = pilot.app
        assert isinstance(app, DashboardApp)
        await wait_until(pilot, lambda: app.polls >= 1, what="the first snapshot")
        await wait_until(pilot, lambda: "avail" in str(app.main._header.render()),
                         what="host memory")
        await pilot.press(*keys)
        await wait_until(pilot, lambda: app.polls >= polls, what=f"{polls} polls")
        await pilot.pause()

    return run_before


def test_main_screen(snap_compare: SnapCompare, app: DashboardApp) -> None:
    # vm2 selected, the cursor on vm3, vm1's hint turned on (an action re-polls at once).
    keys = ("h", "down", "space", "down")
    assert snap_compare(app, terminal_size=SIZE, run_before=settled(*keys, polls=2))


def test_set_target_dialog_refusing(snap_compare: SnapCompare, app: DashboardApp) -> None:
    assert snap_compare(app, terminal_size=SIZE, run_before=settled("t", *"3G"))


def test_set_target_dialog_for_several_vms(snap_compare: SnapCompare, app: DashboardApp) -> None:
    keys = ("space", "down", "space", "down", "down", "down", "space", "t", *"-256M")
    assert snap_compare(app, terminal_size=SIZE, run_before=settled(*keys))


def test_help_screen(snap_compare: SnapCompare, app: DashboardApp) -> None:
    assert snap_compare(app, terminal_size=SIZE, run_before=settled("question_mark"))


def test_main_screen_on_an_80x24_terminal(snap_compare: SnapCompare, app: DashboardApp) -> None:
    # Every row with actual, free and cached; the detail pane below; help and quit in the footer.
    assert snap_compare(app, terminal_size=(80, 24), run_before=settled())
