"""The dashboard driven with Pilot over a deterministic in-memory source.

Scenarios against the fake QEMU fleet are in test_tui_fake.py; these cover the screen's
behaviour (dialog, selection, sort, filter, palette, failures) quickly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from rich.console import Console
from textual.command import CommandList, CommandPalette
from textual.message import Message
from textual.pilot import Pilot
from textual.widgets import Input, Sparkline, Static

from balloonctl.errors import ConnectFailed
from balloonctl.model import BalloonState, HintMode, HintState
from balloonctl.units import GiB, MiB, TargetSpec, format_size_aligned
from tui.app import DashboardApp
from tui.messages import ActionDone, SnapshotReady, SourceFailed
from tui.screens import HelpScreen, SetTargetDialog
from tui.testing import FIXED_TIME, StaticSource, sample_states, wait_until
from tui.widgets import EventLog, FleetHeader, FleetTable

SIZE = (160, 40)


def make_app(source: StaticSource, **kw: object) -> DashboardApp:
    return DashboardApp(source, interval=0.1, meminfo=None, clock=lambda: 0.0, **kw)  # type: ignore[arg-type]


async def started(pilot: Pilot[None], app: DashboardApp) -> FleetTable:
    await wait_until(pilot, lambda: app.polls >= 1, what="the first snapshot")
    return app.main.table


def cell(table: FleetTable, vm: str, column: str) -> str:
    value = table.get_cell(vm, column)
    return value if isinstance(value, str) else value.plain


async def test_rows_show_the_sources_numbers() -> None:
    source = StaticSource(sample_states(6))
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        table = await started(pilot, app)
        assert table.row_count == 6
        for state in source.states.values():
            stats = state.stats
            assert cell(table, state.name, "actual") == format_size_aligned(state.actual)
            assert cell(table, state.name, "ram") == format_size_aligned(state.guest_ram)
            free = None if stats is None else stats.free_memory
            assert cell(table, state.name, "free") == format_size_aligned(free)
            assert cell(table, state.name, "state").startswith(state.status.value)
        assert "connection refused" in cell(table, "vm5", "state")
        assert cell(table, "vm2", "hint") == "on (agent)"


async def open_dialog(pilot: Pilot[None], app: DashboardApp) -> SetTargetDialog:
    await pilot.press("t")
    await wait_until(pilot, lambda: isinstance(app.screen, SetTargetDialog), what="the dialog")
    assert isinstance(app.screen, SetTargetDialog)
    return app.screen


def verdict(dialog: SetTargetDialog) -> str:
    return str(dialog.query_one("#target-verdict", Static).render())


async def test_dialog_refuses_unsafe_sizes_with_the_reason_and_sends_nothing() -> None:
    source = StaticSource(sample_states(6))
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        dialog = await open_dialog(pilot, app)
        limits = str(dialog.query_one("#target-limits", Static).render())
        assert "floor 256 MiB" in limits and "maximum 2 GiB" in limits
        for text, reason in [
            ("lots", "invalid size"),
            ("3G", "above guest RAM"),
            ("200M", "below the safe floor 256 MiB (tick force to go lower)"),
            ("100M", "below the hard minimum"),
            ("0%", "percentage"),
        ]:
            field = dialog.query_one("#target-input", Input)
            field.value = ""
            await pilot.press(*text, "enter")
            await pilot.pause()
            assert reason in verdict(dialog), text
            assert "--force" not in verdict(dialog)  # the CLI's wording; here it is a box
            assert app.screen is dialog  # still open
        assert source.calls == []
        await pilot.press("escape")
        await wait_until(pilot, lambda: app.screen is app.main, what="the dialog to close")
        assert source.calls == []


async def test_dialog_force_allows_below_the_floor_but_not_the_hard_minimum() -> None:
    source = StaticSource(sample_states(2))
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        dialog = await open_dialog(pilot, app)
        await pilot.press(*"100M")
        await pilot.click("#target-force")
        assert "100 MiB is below the hard minimum" in verdict(dialog)
        dialog.query_one("#target-input", Input).value = "200M"
        await pilot.pause()
        await pilot.click("#target-set")
        await wait_until(pilot, lambda: bool(source.calls), what="the target to be sent")
        assert source.calls == [("set_target", "vm1", 200 * MiB)]


async def test_dialog_target_is_sent_and_the_row_follows() -> None:
    source = StaticSource(sample_states(6))
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        table = await started(pilot, app)
        await pilot.press("down")  # vm2
        await open_dialog(pilot, app)
        await pilot.press(*"1.5G", "enter")
        await wait_until(pilot, lambda: cell(table, "vm2", "target") == "1.50G", what="vm2")
        assert source.calls == [("set_target", "vm2", 3 * GiB // 2)]
        assert table.cursor_vm == "vm2"


async def test_multi_select_steps_every_selected_vm_and_refuses_per_vm() -> None:
    source = StaticSource(sample_states(6))
    app = make_app(source, step=256 * MiB)
    done: list[ActionDone] = []

    def hook(message: Message) -> None:
        if isinstance(message, ActionDone):
            done.append(message)

    async with app.run_test(size=SIZE, message_hook=hook) as pilot:
        table = await started(pilot, app)
        await pilot.press("space", "down", "down", "down", "space")  # vm1 and vm4
        assert cell(table, "vm1", "sel") == "●" and cell(table, "vm4", "sel") == "●"
        await pilot.press("minus")
        await wait_until(pilot, lambda: len(done) == 2, what="two results")
        vm1, vm4 = sample_states(4)[0], sample_states(4)[3]
        assert vm1.target is not None and vm4.target is not None
        assert sorted(source.calls) == [
            ("set_target", "vm1", vm1.target - 256 * MiB),
            ("set_target", "vm4", vm4.target - 256 * MiB),
        ]
        # From 1.75G vm4 may go up once by 256M; the next step (above guest RAM) is refused
        # before anything is sent.
        source.calls.clear()
        await pilot.press("escape", "plus", "plus")
        await wait_until(pilot, lambda: len(done) == 3, what="vm4's step up")
        await pilot.pause()
        assert source.calls == [("set_target", "vm4", 2 * GiB)]
        assert any("above guest RAM" in line for line in app.view.history["vm4"].events)


async def test_hint_toggle_and_stats_are_sent_and_shown() -> None:
    source = StaticSource(sample_states(3))
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        table = await started(pilot, app)
        assert cell(table, "vm1", "hint") == "off (agent)"
        await pilot.press("h")
        await wait_until(pilot, lambda: cell(table, "vm1", "hint") == "on (agent)", what="hint")
        await pilot.press("down", "down", "s")
        await wait_until(pilot, lambda: len(source.calls) == 2, what="stats")
        assert source.calls == [("set_hint", "vm1", True), ("enable_stats", "vm3", 2)]


async def test_command_palette_offers_the_actions() -> None:
    source = StaticSource(sample_states(3))
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        await pilot.press("ctrl+p")
        await wait_until(pilot, lambda: isinstance(app.screen, CommandPalette), what="palette")
        await pilot.press(*"toggle hint")
        hits = app.screen.query_one(CommandList)

        def offered() -> bool:  # the palette searches in the background
            return any("Toggle hint" in str(hits.get_option_at_index(i).prompt)
                       for i in range(hits.option_count))

        await wait_until(pilot, offered, what="the palette to offer the action")
        await pilot.press("enter")
        await wait_until(pilot, lambda: source.calls == [("set_hint", "vm1", True)],
                         what="the palette's action")


async def test_sort_and_filter_keep_the_cursor_on_its_vm() -> None:
    source = StaticSource(sample_states(6))
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        table = await started(pilot, app)
        await pilot.press("down", "down")
        assert table.cursor_vm == "vm3"
        await pilot.press("o")  # sort by state: unreachable first
        await pilot.pause()
        assert table.ordered_rows[0].key.value == "vm5"
        assert table.cursor_vm == "vm3"
        polls = app.polls
        await wait_until(pilot, lambda: app.polls >= polls + 3, what="more polls")
        assert table.cursor_vm == "vm3"
        await pilot.press("slash", *"vm5", "enter")
        await pilot.pause()
        assert table.row_count == 1
        assert table.cursor_vm == "vm5"  # vm3 is filtered out: the cursor is on what is left
        await pilot.press("escape")  # clears the filter (nothing selected)
        await pilot.pause()
        assert table.row_count == 6
        assert table.cursor_vm == "vm5"  # rows coming back do not move it off its VM


async def test_a_filter_keeps_the_cursor_on_its_vm_and_actions_act_on_it() -> None:
    source = StaticSource(sample_states(6))
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        table = await started(pilot, app)
        await pilot.press("down", "down", "down")
        assert table.cursor_vm == "vm4"
        await pilot.press("slash", *"ok", "enter")  # rows above vm4 (vm2, vm3) disappear
        await wait_until(pilot, lambda: table.row_count == 3, what="the filter")
        assert [r.key.value for r in table.ordered_rows] == ["vm1", "vm4", "vm6"]
        assert table.cursor_vm == "vm4"
        await pilot.press("h")
        await wait_until(pilot, lambda: bool(source.calls), what="the hint toggle")
        assert source.calls == [("set_hint", "vm4", False)]
        await pilot.press("escape")  # clears the filter: the rows above come back
        await wait_until(pilot, lambda: table.row_count == 6, what="all rows")
        assert table.cursor_vm == "vm4"
        await pilot.press("slash", *"vm5", "enter")  # the cursor's VM is filtered out
        await wait_until(pilot, lambda: table.row_count == 1, what="vm5 only")
        assert table.cursor_vm == "vm5"


async def test_help_lists_the_keys() -> None:
    app = make_app(StaticSource(sample_states(2)))
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        await pilot.press("question_mark")
        await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen), what="help")
        keys = app.screen.query_one("#help-keys", Static)  # what the help screen shows
        assert keys.region.height > 0
        console = Console(width=120, record=True, file=io.StringIO())
        console.print(keys.content)
        text = console.export_text()
        assert "Set the balloon target" in text and "cache-first hint" in text
        assert "+ / =" in text  # every key of a binding, not just the footer's
        await pilot.press("escape")
        await wait_until(pilot, lambda: app.screen is app.main, what="help to close")


class FlakySource(StaticSource):
    """Fails every snapshot while ``down`` is set, like an agent that went away."""

    def __init__(self, states: list[BalloonState]) -> None:
        super().__init__(states)
        self.down = False

    async def snapshot(self) -> list[BalloonState]:
        if self.down:
            raise ConnectFailed("cannot connect to the balloonctl agent")
        return await super().snapshot()


async def test_a_failing_source_keeps_rows_and_recovers() -> None:
    source = FlakySource(sample_states(3))
    app = make_app(source)
    seen: list[Message] = []
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        table = await started(pilot, app)
        source.down = True
        header = app.main.query_one(FleetHeader)
        await wait_until(pilot, lambda: "cannot connect" in str(header.render()), what="error")
        assert table.row_count == 3
        source.down = False
        app.main.action_refresh()
        await wait_until(pilot, lambda: "cannot connect" not in str(header.render()),
                         what="recovery")
        assert any(isinstance(m, SourceFailed) for m in seen)
        assert any(isinstance(m, SnapshotReady) for m in seen)


class SlowSource(StaticSource):
    """Actions hang until released, like a VM whose socket never answers."""

    def __init__(self, states: list[BalloonState]) -> None:
        super().__init__(states)
        self.release = asyncio.Event()

    async def set_target(self, name: str, spec: TargetSpec, *, force: bool = False) -> int:
        await self.release.wait()
        return await super().set_target(name, spec, force=force)


async def test_a_hung_action_never_freezes_the_screen() -> None:
    source = SlowSource(sample_states(3))
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        table = await started(pilot, app)
        await pilot.press("minus")
        polls = app.polls
        await wait_until(pilot, lambda: app.polls >= polls + 3, what="polls to continue")
        await pilot.press("down")
        assert table.cursor_vm == "vm2"
        source.release.set()
        await wait_until(pilot, lambda: len(source.calls) == 1, what="the action to finish")


async def test_host_memory_is_read_from_the_given_file(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 8388608 kB\nMemFree: 1048576 kB\nMemAvailable: 4194304 kB\n")
    app = DashboardApp(StaticSource(sample_states(2)), interval=0.1, meminfo=meminfo)
    async with app.run_test(size=SIZE) as pilot:
        header = app.main.query_one(FleetHeader)
        await wait_until(pilot, lambda: "avail 4 GiB" in str(header.render()), what="host")
        assert "free 1 GiB" in str(header.render())


async def test_a_malformed_meminfo_shows_one_line_naming_the_file(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: lots kB\nMemFree: 1048576 kB\n")
    app = DashboardApp(StaticSource(sample_states(2)), interval=0.1, meminfo=meminfo)
    async with app.run_test(size=SIZE) as pilot:
        header = app.main.query_one(FleetHeader)
        await wait_until(pilot, lambda: "MemTotal is not a number" in str(header.render()),
                         what="the host error")
        assert f"host {meminfo}: MemTotal is not a number: 'lots'" in str(header.render())


async def test_run_dashboard_closes_its_source() -> None:
    source = StaticSource(sample_states(1))
    app = DashboardApp(source, meminfo=None, close_source=True)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
    assert source.closed




async def test_a_row_shown_again_after_a_filter_shows_its_new_numbers() -> None:
    source = StaticSource(sample_states(3))
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        assert "274M" in app.export_screenshot()  # vm2's free memory
        await pilot.press("slash", *"vm1", "enter")
        await wait_until(pilot, lambda: app.main.table.row_count == 1, what="the filter")
        vm2 = source.states["vm2"]
        assert vm2.stats is not None
        source.states["vm2"] = vm2.with_changes(
            stats=dataclasses.replace(vm2.stats, free_memory=999 * MiB)
        )
        polls = app.polls
        await wait_until(pilot, lambda: app.polls >= polls + 2, what="polls")
        await pilot.press("escape")
        await wait_until(pilot, lambda: app.main.table.row_count == 3, what="all rows")
        await pilot.pause()
        shot = app.export_screenshot()
        assert "999M" in shot and "274M" not in shot


async def test_quick_steps_each_step_from_the_last_one() -> None:
    source = SlowSource(sample_states(1))  # vm1's target: 1.75G
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        table = await started(pilot, app)
        start = app.view.state("vm1").target  # type: ignore[union-attr]
        assert start == 7 * GiB // 4
        # Three presses in one go: none of their messages is handled in between.
        for _ in range(3):
            app.main.action_step(-1)
        await pilot.press("minus")  # and a fourth after a poll that still says 1.75G
        polls = app.polls
        await wait_until(pilot, lambda: app.polls >= polls + 2, what="polls with old targets")
        assert cell(table, "vm1", "target") == format_size_aligned(start - 4 * 128 * MiB)
        await pilot.press("minus")
        source.release.set()
        await wait_until(pilot, lambda: len(source.calls) == 5, what="five targets sent")
        want = [start - k * 128 * MiB for k in range(1, 6)]
        assert source.calls == [("set_target", "vm1", t) for t in want]
        polls = app.polls
        await wait_until(pilot, lambda: app.polls >= polls + 2, what="polls after the results")
        assert app.view.state("vm1").target == want[-1]  # type: ignore[union-attr]
        assert cell(table, "vm1", "target") == format_size_aligned(want[-1])


async def test_dialog_and_detail_respect_the_vms_configured_maximum() -> None:
    vm1 = sample_states(1)[0].with_changes(maximum=3 * GiB // 2, target=GiB, actual=GiB)
    source = StaticSource([vm1])
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        assert "max 1.5 GiB" in str(app.main.query_one("#detail-facts", Static).render())
        dialog = await open_dialog(pilot, app)
        limits = str(dialog.query_one("#target-limits", Static).render())
        assert "maximum 1.5 GiB" in limits
        await pilot.press(*"1.75G", "enter")
        await pilot.pause()
        assert "above the VM's maximum (1.5 GiB)" in verdict(dialog)
        assert app.screen is dialog and source.calls == []
        dialog.query_one("#target-input", Input).value = "1.5G"
        await pilot.press("enter")
        await wait_until(pilot, lambda: bool(source.calls), what="the target to be sent")
        assert source.calls == [("set_target", "vm1", 3 * GiB // 2)]


async def test_detail_pane_shows_the_device_features_even_when_lines_wrap() -> None:
    vm1 = sample_states(1)[0]
    hint = HintState(HintMode.AGENT, enabled=True,
                     detail="drops the page cache through guest-exec before each inflation")
    app = make_app(StaticSource([vm1.with_changes(hint=hint)]))
    async with app.run_test(size=(110, 40)) as pilot:
        await started(pilot, app)
        await pilot.pause()
        shot = app.export_screenshot().replace("&#160;", " ")
        assert "before each inflation" in shot
        assert "free-page-reporting on" in shot


async def test_detail_pane_keeps_nothing_of_the_last_vm_when_no_vm_is_shown() -> None:
    source = StaticSource(sample_states(3))
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        await pilot.press("h")
        await wait_until(pilot, lambda: bool(app.view.history["vm1"].events), what="an event")
        polls = app.polls
        await wait_until(pilot, lambda: app.polls >= polls + 1, what="a sample")
        detail = app.main.query_one("#detail")
        sparks = list(detail.query(Sparkline))
        assert all(spark.data for spark in sparks)
        await pilot.press("slash", *"nothing-matches", "enter")
        await wait_until(pilot, lambda: app.main.table.row_count == 0, what="no rows")
        assert "no VM selected" in str(detail.query_one("#detail-facts", Static).render())
        assert all(not spark.data for spark in sparks)
        assert str(detail.query_one("#detail-events", Static).render()) == ""


async def test_event_log_stamps_lines_in_local_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # UTC+5:30: differs from UTC in hours and minutes
    time.tzset()
    try:
        app = DashboardApp(StaticSource(sample_states(1)), interval=0.1, meminfo=None,
                           clock=lambda: FIXED_TIME)
        async with app.run_test(size=SIZE) as pilot:
            await started(pilot, app)
            await pilot.press("h")
            log = app.main.query_one(EventLog)
            await wait_until(pilot, lambda: len(log.lines) >= 1, what="the action's line")
            assert log.lines[0].text.startswith("19:43:20 ")  # 14:13:20 UTC
    finally:
        monkeypatch.undo()
        time.tzset()


class StreamingSource(StaticSource):
    """Reports each VM as it is read (``snapshot_each``); vm2 hangs until ``vm2_answers``."""

    def __init__(self, states: list[BalloonState]) -> None:
        super().__init__(states)
        self.vm2_answers = asyncio.Event()

    async def snapshot(self) -> list[BalloonState]:
        raise AssertionError("snapshot() must not be used when snapshot_each() exists")

    async def snapshot_each(self) -> AsyncIterator[BalloonState]:
        for name, state in list(self.states.items()):
            if name == "vm2":
                await self.vm2_answers.wait()
            yield state


async def test_rows_appear_as_each_vm_answers_when_the_source_reports_each() -> None:
    source = StreamingSource(sample_states(3))
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        table = app.main.table
        await wait_until(pilot, lambda: table.row_count == 1, what="vm1's row")
        assert cell(table, "vm1", "state") == "ok" and app.polls == 0  # vm2 still hangs
        await pilot.press("minus")  # the screen works on what has arrived
        await wait_until(pilot, lambda: bool(source.calls), what="vm1's step")
        source.vm2_answers.set()
        await wait_until(pilot, lambda: app.polls >= 1 and table.row_count == 3,
                         what="the whole round")
        assert [r.key.value for r in table.ordered_rows] == ["vm1", "vm2", "vm3"]


async def test_a_round_reported_vm_by_vm_is_shown_in_one_redraw() -> None:
    source = StreamingSource(sample_states(3))
    source.vm2_answers.set()  # every VM answers at once
    app = make_app(source)
    app.interval = 5.0  # rounds end long before the fallback redraw would fire
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        shown: list[int] = []
        show_fleet = app.main.show_fleet

        def counted() -> None:
            shown.append(app.polls)
            show_fleet()

        app.main.show_fleet = counted  # type: ignore[method-assign]
        app._wake.set()  # the next round now
        await wait_until(pilot, lambda: app.polls >= 2, what="the second round")
        # A third round bounds the check without a sleep: batches of a round are posted
        # before its end, so any extra redraw of round 2 would be counted before round 3's.
        app._wake.set()
        await wait_until(pilot, lambda: app.polls >= 3 and len(shown) >= 2, what="round 3")
        assert shown == [2, 3]  # once per round, at its end: not once per VM or per batch
        assert app.main.table.row_count == 3
