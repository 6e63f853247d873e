"""What the dashboard's screen shows at the terminal sizes people use: the rows, the
panels, the keys, the detail pane, the sparklines, the event log, the numbers.

Every assertion reads the rendered screen (``tui.testing.screen_text``), as a user would.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from textual.pilot import Pilot

from balloonctl.model import BalloonState, GuestStats
from balloonctl.units import GiB, MiB, format_size_aligned
from tui.app import DashboardApp
from tui.screens import HelpScreen, SetTargetDialog
from tui.testing import FIXED_TIME, StaticSource, sample_states, screen_text, wait_until
from tui.widgets.sparkline import spark

SMALL = (80, 24)
LARGE = (160, 40)


def make_app(source: StaticSource, **kw: object) -> DashboardApp:
    return DashboardApp(source, interval=0.1, meminfo=None, clock=lambda: 0.0,  # type: ignore[arg-type]
                        **kw)


async def started(pilot: Pilot[None], app: DashboardApp, polls: int = 1) -> list[str]:
    await wait_until(pilot, lambda: app.polls >= polls, what=f"{polls} polls")
    await pilot.pause()
    return screen_text(app)


def row_line(lines: Sequence[str], vm: str) -> str:
    """The table line of ``vm`` (its name is the first word after the selection mark)."""
    found = [line for line in lines if re.match(rf"^\s*[●]?\s*{vm}\s", line)]
    assert len(found) == 1, f"{vm}: {found}"
    return found[0]


def column_end(lines: Sequence[str], label: str) -> int:
    """Where the table header's ``label`` ends (numbers are right-aligned under it)."""
    header = next(line for line in lines if re.search(r"\bVM\b.*\bstate\b", line))
    match = re.search(rf"\b{re.escape(label)}\b", header)
    assert match is not None, header
    return match.end()


# -- the 80x24 terminal ------------------------------------------------------------------------
async def test_80x24_shows_every_row_with_actual_free_and_cached_and_help_and_quit() -> None:
    states = sample_states(6)
    app = make_app(StaticSource(states))
    async with app.run_test(size=SMALL) as pilot:
        lines = await started(pilot, app)
        assert len(lines) == 24
        for label in ("actual", "free", "cached"):
            column_end(lines, label)  # the column is on screen
        ends = {label: column_end(lines, label) for label in ("actual", "free", "cached")}
        for state in states:
            line = row_line(lines, state.name)
            stats = state.stats or GuestStats()
            reported = stats.reported
            want = {
                "actual": state.actual,
                "free": stats.free_memory if reported else None,
                "cached": stats.disk_caches if reported else None,
            }
            for label, value in want.items():
                text = format_size_aligned(value)
                end = ends[label]
                assert line[end - len(text):end] == text, (state.name, label, line)
        footer = lines[-1]
        assert "? Help" in footer and "q Quit" in footer
        assert any("╭─ detail" in line for line in lines)  # and the detail pane still fits


async def test_the_panels_take_what_the_rows_leave_and_p_hides_them() -> None:
    app = make_app(StaticSource(sample_states(20)))
    async with app.run_test(size=SMALL) as pilot:
        lines = await started(pilot, app)
        # 20 rows do not fit with the panels: the panels keep a share, the table the rest.
        shown = [n for n in range(1, 21) if any(re.match(rf"^\s*vm{n}\s", x) for x in lines)]
        assert any("╭─ detail" in line for line in lines)
        assert 8 <= len(shown) < 20
        for _ in range(3):  # both -> detail -> log -> hidden
            await pilot.press("p")
        await pilot.pause()
        lines = screen_text(app)
        assert not any("╭─" in line for line in lines)
        more = [n for n in range(1, 21) if any(re.match(rf"^\s*vm{n}\s", x) for x in lines)]
        assert len(more) == 24 - 5  # every line but header, toolbar, column labels,
        # scrollbar and footer
        await pilot.press("p")  # and back
        await pilot.pause()
        assert any("╭─ detail" in line for line in screen_text(app))


async def test_a_large_terminal_shows_every_row_and_panels_no_taller_than_their_content() -> None:
    app = make_app(StaticSource(sample_states(30)))
    async with app.run_test(size=(160, 60)) as pilot:
        lines = await started(pilot, app)
        for n in range(1, 31):
            row_line(lines, f"vm{n}")
        top = next(i for i, line in enumerate(lines) if "╭─ detail" in line)
        bottom = next(i for i, line in enumerate(lines) if line.startswith("╰"))
        assert bottom - top + 1 <= 18  # the panels' cap: the rest is the table's
        assert any("╭─ events" in line for line in lines)  # wide: both panels


# -- keys -------------------------------------------------------------------------------------
async def test_ctrl_c_quits() -> None:
    app = make_app(StaticSource(sample_states(2)))
    async with app.run_test(size=SMALL) as pilot:
        await started(pilot, app)
        await pilot.press("ctrl+c")
        await wait_until(pilot, lambda: app._exit, what="the app to exit")


async def test_f10_quits_even_from_the_filter() -> None:
    app = make_app(StaticSource(sample_states(2)))
    async with app.run_test(size=SMALL) as pilot:
        await started(pilot, app)
        await pilot.press("slash", "v", "f10")
        await wait_until(pilot, lambda: app._exit, what="the app to exit")


def detail_title(lines: Sequence[str]) -> str:
    line = next(line for line in lines if "╭─ detail" in line)
    match = re.search(r"detail: (\S+)", line)
    assert match is not None, line
    return match.group(1)


async def test_j_and_k_move_the_cursor() -> None:
    app = make_app(StaticSource(sample_states(6)))
    async with app.run_test(size=SMALL) as pilot:
        lines = await started(pilot, app)
        assert detail_title(lines) == "vm1"
        await pilot.press("j", "j", "j")
        await pilot.pause()
        assert detail_title(screen_text(app)) == "vm4"
        await pilot.press("k")
        await pilot.pause()
        assert detail_title(screen_text(app)) == "vm3"


def table_order(lines: Sequence[str]) -> list[str]:
    return [m.group(1) for line in lines if (m := re.match(r"^\s*[●]?\s*(vm\d+)\s", line))]


async def test_each_column_has_its_own_sort_key_and_again_reverses() -> None:
    states = sample_states(6)
    app = make_app(StaticSource(states))
    async with app.run_test(size=SMALL) as pilot:
        await started(pilot, app)
        by_free = sorted((s for s in states if s.stats and s.stats.reported),
                         key=lambda s: s.stats.free_memory or 0)  # type: ignore[union-attr]
        unknown = [s.name for s in states if not (s.stats and s.stats.reported)]
        await pilot.press("4")  # free
        await pilot.pause()
        lines = screen_text(app)
        assert table_order(lines) == [s.name for s in by_free] + unknown
        assert "free ▲" in next(x for x in lines if "VM" in x and "state" in x)
        await pilot.press("4")
        await pilot.pause()
        assert table_order(screen_text(app)) == [s.name for s in reversed(by_free)] + unknown
        await pilot.press("1")  # VM: by name again
        await pilot.pause()
        assert table_order(screen_text(app)) == [s.name for s in states]


async def test_help_lists_the_sort_keys_the_panels_key_and_the_quit_keys() -> None:
    app = make_app(StaticSource(sample_states(2)))
    async with app.run_test(size=LARGE) as pilot:
        await started(pilot, app)
        await pilot.press("question_mark")
        await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen), what="help")
        await wait_until(pilot, lambda: "dashboard: keys" in "".join(screen_text(app)),
                         what="the help on screen")
        text = "\n".join(screen_text(app))
        assert "1 … 0" in text and "4 free" in text and "0 age" in text
        assert "ctrl+c / f10" in text and "j " in text and "k " in text
        assert "Bottom panels" in text


# -- the detail pane -----------------------------------------------------------------------------
async def test_the_detail_pane_shows_every_fact_at_80x24() -> None:
    app = make_app(StaticSource(sample_states(6)))
    async with app.run_test(size=SMALL) as pilot:
        text = "\n".join(await started(pilot, app))
        for fact in ("floor 256 MiB", "max 2 GiB", "stats every 2s", "deflate-on-oom off",
                     "free-page-reporting on", "free-page-hint off", "hint off (agent)",
                     "ballooned 256M"):  # the legend wraps, it is not cut
            assert fact in text, fact


async def test_a_long_reason_wraps_in_the_detail_pane() -> None:
    long_path = "/run/balloonctl/" + "a-rather-long-directory-name/" * 3 + "vm1.qmp"
    vm1 = BalloonState(name="vm1", qmp=long_path, reachable=False,
                       error=f"vm1: cannot connect to {long_path}: connection refused",
                       error_kind="ConnectFailed", taken_at=FIXED_TIME)
    app = make_app(StaticSource([vm1]))
    async with app.run_test(size=SMALL) as pilot:
        lines = await started(pilot, app)
        inside = " ".join(line.strip("│ ") for line in lines if line.startswith("│"))
        assert "connection refused" in inside  # the end of the reason is on screen


# -- sparklines ----------------------------------------------------------------------------------
def test_a_sparkline_is_one_column_per_sample_on_a_fixed_scale_with_gaps() -> None:
    ram = 2 * GiB
    nan = float("nan")
    # 0 and anything up to an eighth is the lowest block, the whole scale the full one.
    assert spark([0, ram / 8, ram / 2, ram, nan, ram], ram, 8) == "  ▁▁▄█ █"
    assert spark([ram / 2] * 3, ram, 3) == "▄▄▄"  # a flat line is drawn at its level
    assert spark([1.0, 2.0], None, 3) == "   "  # no scale: nothing is made up
    assert spark([float(i) for i in range(10)], 9.0, 4) == spark([6.0, 7.0, 8.0, 9.0], 9.0, 4)


class ScriptedSource(StaticSource):
    """Each poll returns the next round of states; the last round repeats."""

    def __init__(self, rounds: list[list[BalloonState]]) -> None:
        super().__init__(rounds[0])
        self.rounds = rounds
        self.served = 0

    async def snapshot(self) -> list[BalloonState]:
        states = self.rounds[min(self.served, len(self.rounds) - 1)]
        self.served += 1
        return list(states)


def unreachable(state: BalloonState, kind: str = "ConnectFailed") -> BalloonState:
    return BalloonState(name=state.name, qmp=state.qmp, reachable=False,
                        error=f"{state.name}: cannot connect: connection refused",
                        error_kind=kind, taken_at=state.taken_at)


async def test_the_actual_sparkline_has_a_gap_where_the_vm_was_unreachable() -> None:
    vm1 = sample_states(1)[0]  # 1.75 GiB of 2 GiB
    rounds = [[vm1], [unreachable(vm1)], [vm1.with_changes(actual=GiB, target=GiB)]]
    app = make_app(ScriptedSource(rounds))
    async with app.run_test(size=LARGE) as pilot:
        lines = await started(pilot, app, polls=3)
        line = next(x for x in lines if re.search(r"│ actual [\d.]+[GM] ", x))  # its label
        # 7/8 of guest RAM, a gap, then half: on the fixed 0..2 GiB scale.
        assert "▇ ▄" in line, line
        assert any("scale 0–2 GiB" in x for x in lines)


# -- the event log -------------------------------------------------------------------------------
def log_text(lines: Sequence[str]) -> str:
    """The event log's box (the right half of the panels on a wide terminal), inside its
    borders: not the footer below it."""
    top = next(i for i, line in enumerate(lines) if "╭─ events" in line)
    left = lines[top].index("╭─ events")
    bottom = next(i for i in range(top + 1, len(lines)) if lines[i][left:left + 1] == "╰")
    return "\n".join(line[left + 1:-1].strip() for line in lines[top + 1:bottom] if line)


async def test_the_event_log_records_state_changes() -> None:
    vm1 = sample_states(1)[0].with_changes(target=GiB)  # converging from 1.75 GiB
    t = FIXED_TIME
    rounds = [
        [vm1],
        [unreachable(vm1.with_changes(taken_at=t + 1), "SocketBusy")],
        [vm1.with_changes(taken_at=t + 2)],  # recovered, still converging at 1.75 GiB
        [vm1.with_changes(taken_at=t + 8)],  # not moved for 6 s: stuck
        [vm1.with_changes(actual=GiB, taken_at=t + 9)],  # converged
    ]
    app = make_app(ScriptedSource(rounds))
    async with app.run_test(size=LARGE) as pilot:
        text = log_text(await started(pilot, app, polls=5))
        order = ["vm1: busy: cannot connect", "vm1: recovered: converging",
                 "vm1: stuck at 1.75 GiB, target 1 GiB: no movement for 6s",
                 "vm1: converged: actual 1 GiB"]
        where = [text.find(entry) for entry in order]
        assert all(i >= 0 for i in where) and where == sorted(where), text


async def test_an_action_is_one_log_line_and_long_lines_wrap() -> None:
    source = StaticSource(sample_states(6))
    app = make_app(source)
    async with app.run_test(size=LARGE) as pilot:
        before = log_text(await started(pilot, app))
        # vm5's error is longer than the log is wide: it wraps, its end is on screen.
        assert "connection refused" in before
        await pilot.press("h")
        await wait_until(pilot, lambda: bool(source.calls), what="the hint toggle")
        # the action's result line is the last thing it writes: wait for it, not a pause
        await wait_until(pilot, lambda: "vm1: hint on" in log_text(screen_text(app)),
                         what="the action's log line")
        after = log_text(screen_text(app))
        new = [line for line in after.splitlines() if line and line not in before.splitlines()]
        assert new == ["00:00:00 vm1: hint on (agent mode)"], new


# -- numbers and the set-target dialog -------------------------------------------------------------
async def test_sizes_are_right_aligned_with_three_significant_digits() -> None:
    states = sample_states(6)
    app = make_app(StaticSource(states))
    async with app.run_test(size=LARGE) as pilot:
        lines = await started(pilot, app)
        for label, value in (("actual", lambda s: s.actual), ("RAM", lambda s: s.guest_ram),
                             ("target", lambda s: s.target)):
            end = column_end(lines, label)
            for state in states:
                line = row_line(lines, state.name)
                size = value(state)
                want = "-" if size is None else format_size_aligned(size)
                assert line[end - len(want):end] == want, (label, line)
                assert line[end - 6] == " "  # nothing more to its left in the cell
        assert "2.00G" in row_line(lines, "vm4")  # not "2G" beside "1.75G"


async def test_the_dialog_shows_the_exact_bytes_that_are_sent() -> None:
    source = StaticSource(sample_states(1))
    app = make_app(source)
    async with app.run_test(size=SMALL) as pilot:
        await started(pilot, app)
        await pilot.press("t")
        await wait_until(pilot, lambda: isinstance(app.screen, SetTargetDialog), what="dialog")
        await pilot.press(*"1.8G")
        await pilot.pause()
        text = "\n".join(screen_text(app))
        match = re.search(r"vm1 → (~?[\d.]+ \w+) \((\d+) bytes\)", text)
        assert match is not None, text
        await pilot.press("enter")
        await wait_until(pilot, lambda: bool(source.calls), what="the target to be sent")
        assert source.calls == [("set_target", "vm1", int(match.group(2)))]
        assert match.group(1) == "~1.8 GiB"  # 1.8 GiB is not a whole number of bytes


# -- hint and filter ---------------------------------------------------------------------------
async def test_a_mixed_selection_turns_the_hint_on_for_all_then_off_for_all() -> None:
    source = StaticSource(sample_states(2))  # vm1 off, vm2 on
    app = make_app(source)
    async with app.run_test(size=LARGE) as pilot:
        lines = await started(pilot, app)
        assert "off (agent)" in row_line(lines, "vm1") and "agent off" not in lines[3]
        await pilot.press("space", "j", "space", "h")
        await wait_until(pilot, lambda: len(source.calls) == 2, what="two hint changes")
        assert sorted(source.calls) == [("set_hint", "vm1", True), ("set_hint", "vm2", True)]
        polls = app.polls
        await wait_until(pilot, lambda: app.polls >= polls + 2, what="the new hints")
        source.calls.clear()
        await pilot.press("h")
        await wait_until(pilot, lambda: len(source.calls) == 2, what="two hint changes")
        assert sorted(source.calls) == [("set_hint", "vm1", False), ("set_hint", "vm2", False)]


async def test_the_filter_matches_what_the_cells_show() -> None:
    states = sample_states(6)
    app = make_app(StaticSource(states))
    async with app.run_test(size=LARGE) as pilot:
        await started(pilot, app)
        await pilot.press("slash", *"on (agent)", "enter")
        await pilot.pause()
        lines = screen_text(app)
        shown = table_order(lines)
        assert shown and all("on (agent)" in row_line(lines, vm) for vm in shown)
        assert shown == [s.name for s in states if s.reachable and s.hint.enabled]


async def test_steps_of_a_quarter_gib_show_in_the_row_exactly() -> None:
    source = StaticSource(sample_states(1))
    app = make_app(source, step=256 * MiB)
    async with app.run_test(size=SMALL) as pilot:
        await started(pilot, app)
        await pilot.press("minus")
        await wait_until(pilot, lambda: bool(source.calls), what="the step")
        await wait_until(pilot, lambda: "1.50G" in row_line(screen_text(app), "vm1"),
                         what="1.75G - 256M shown as 1.50G")
