"""Every key the dashboard's help screen lists does what the help says (Pilot, in-memory
source). The help screen itself is read from the screen, not from a fresh table."""

from __future__ import annotations

import io

from rich.console import Console
from textual.pilot import Pilot
from textual.widgets import Input, Static

from balloonctl.units import GiB, MiB
from tui.app import DashboardApp
from tui.commands import ACTIONS
from tui.screens import HelpScreen, SetTargetDialog
from tui.testing import StaticSource, sample_states, wait_until

SIZE = (160, 40)
STEP = 128 * MiB


def make_app(source: StaticSource, interval: float = 0.1) -> DashboardApp:
    return DashboardApp(source, interval=interval, meminfo=None, clock=lambda: 0.0,
                        step=STEP, stats_interval=3)


async def ready(pilot: Pilot[None], app: DashboardApp) -> None:
    await wait_until(pilot, lambda: app.polls >= 1, what="the first snapshot")


def order(app: DashboardApp) -> list[str]:
    return [str(r.key.value) for r in app.main.table.ordered_rows]


async def test_r_reverses_the_sort_and_o_sorts_by_the_next_column() -> None:
    app = make_app(StaticSource(sample_states(4)))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        assert order(app) == ["vm1", "vm2", "vm3", "vm4"]
        await pilot.press("r")
        await wait_until(pilot, lambda: order(app) == ["vm4", "vm3", "vm2", "vm1"],
                         what="the reversed order")
        await pilot.press("r")
        await wait_until(pilot, lambda: order(app) == ["vm1", "vm2", "vm3", "vm4"],
                         what="the order back")
        await pilot.press("o")  # name -> state: worst first (no-driver, converging, ok, ok)
        await wait_until(pilot, lambda: order(app) == ["vm3", "vm2", "vm1", "vm4"],
                         what="the state order")


async def test_a_selects_every_vm_shown_and_escape_clears_the_selection() -> None:
    source = StaticSource(sample_states(4))
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("a", "s")
        await wait_until(pilot, lambda: len(source.calls) == 4, what="stats on every VM")
        assert sorted(source.calls) == [("enable_stats", f"vm{i}", 3) for i in range(1, 5)]
        source.calls.clear()
        await pilot.press("escape", "s")  # the selection is gone: the cursor's VM only
        await wait_until(pilot, lambda: len(source.calls) == 1, what="stats on vm1")
        assert source.calls == [("enable_stats", "vm1", 3)]


async def test_a_selects_only_the_filtered_rows() -> None:
    source = StaticSource(sample_states(4))
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("slash")
        assert isinstance(app.focused, Input)  # / focuses the filter
        await pilot.press(*"ok", "enter")
        await wait_until(pilot, lambda: order(app) == ["vm1", "vm4"], what="the filter")
        await pilot.press("a", "h")
        await wait_until(pilot, lambda: len(source.calls) == 2, what="the hint toggles")
        # a mixed selection (vm1 off, vm4 on) is switched to one state: on for all
        assert sorted(source.calls) == [("set_hint", "vm1", True), ("set_hint", "vm4", True)]


async def test_space_selects_the_row_under_the_cursor() -> None:
    source = StaticSource(sample_states(4))
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("space", "down", "down", "space", "space", "down", "space", "h")
        await wait_until(pilot, lambda: len(source.calls) == 2, what="the hint toggles")
        assert sorted(c[1] for c in source.calls) == ["vm1", "vm4"]


async def test_plus_equals_and_minus_step_the_target_by_the_step_size() -> None:
    source = StaticSource(sample_states(4))
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("down", "down", "down")  # vm4: actual and target 2 GiB
        await wait_until(pilot, lambda: app.main.table.cursor_vm == "vm4", what="vm4")
        await pilot.press("minus")
        await wait_until(pilot, lambda: len(source.calls) == 1, what="a step down")
        await pilot.press("minus")
        await wait_until(pilot, lambda: len(source.calls) == 2, what="another step down")
        await pilot.press("plus")
        await wait_until(pilot, lambda: len(source.calls) == 3, what="a step up")
        await pilot.press("equals")
        await wait_until(pilot, lambda: len(source.calls) == 4, what="= steps up too")
        assert [c[2] for c in source.calls] == [2 * GiB - STEP, 2 * GiB - 2 * STEP,
                                                2 * GiB - STEP, 2 * GiB]


async def test_t_opens_the_target_dialog_and_ctrl_r_polls_now() -> None:
    source = StaticSource(sample_states(2))
    app = make_app(source, interval=3600.0)  # no poll would come by itself
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("t")
        await wait_until(pilot, lambda: isinstance(app.screen, SetTargetDialog),
                         what="the dialog")
        await pilot.press("escape")
        await wait_until(pilot, lambda: app.screen is app.main, what="the dialog to close")
        polls = app.polls
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: app.polls > polls, what="a poll on ctrl+r")


def _screen_text(static: Static) -> str:
    console = Console(width=150, record=True, file=io.StringIO())
    console.print(static.content)
    return console.export_text()


async def test_the_help_screen_lists_every_key_and_both_keys_open_it() -> None:
    app = make_app(StaticSource(sample_states(2)))
    async with app.run_test(size=(120, 60)) as pilot:  # tall enough for every key at once
        await ready(pilot, app)
        for key in ("question_mark", "f1"):
            await pilot.press(key)
            await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen), what="help")
            keys = app.screen.query_one("#help-keys", Static)
            shown = [a for a in ACTIONS if a.in_help]
            assert keys.region.height >= len(shown)  # laid out on the screen
            text = _screen_text(keys)
            for line in ("t  ", "+ / =", "-  ", "h  ", "s  ", "space", "a  ", "esc", "o  ",
                         "r  ", "/  ", "^r", "? / f1", "ctrl+p", "q  "):
                assert line in text, (line, text)
            for action in shown:
                assert action.help.split()[0] in text
            await pilot.press("q")  # q closes the help, not the app
            await wait_until(pilot, lambda: app.screen is app.main, what="help to close")
        await pilot.press("q")
        await wait_until(pilot, lambda: not app.is_running, what="q to quit")
