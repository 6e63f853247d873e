"""The dashboard against the fake QEMU fleet, through Fleet (QMP) and through HTTP.

Each scenario acts as a user would (keys, the dialog) and checks what the user would see
against the fake guest's own numbers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from textual.pilot import Pilot

from balloonctl.config import Inventory, scan_dir
from balloonctl.fake import FakeVM
from balloonctl.fleet import DataSource, Fleet
from balloonctl.http import HttpSource
from balloonctl.model import VmRef
from balloonctl.serve import create_app
from balloonctl.units import GiB, MiB, format_size_aligned
from tui.app import DashboardApp
from tui.screens import SetTargetDialog
from tui.testing import wait_until
from tui.widgets import FleetTable

Factory = Callable[..., Awaitable[FakeVM]]
SIZE = (160, 40)


def fleet_of(*vms: FakeVM, **kw: Any) -> Fleet:
    refs = [VmRef(name=vm.name, qmp=str(vm.qmp_path), qga=str(vm.qga_path)) for vm in vms]
    return Fleet(refs, connect_timeout=1.0, command_timeout=2.0, **kw)


def dashboard(source: DataSource, **kw: Any) -> DashboardApp:
    return DashboardApp(source, interval=0.2, meminfo=None, close_source=True, **kw)


def cell(table: FleetTable, vm: str, column: str) -> str:
    value = table.get_cell(vm, column)
    return value if isinstance(value, str) else value.plain


def size(n: int) -> str:
    return format_size_aligned(n)


async def first_poll(pilot: Pilot[None], app: DashboardApp) -> FleetTable:
    await wait_until(pilot, lambda: app.polls >= 1, what="the first snapshot")
    return app.main.table


async def test_rows_show_the_fake_guests_numbers(fake_vm_factory: Factory) -> None:
    vms = [await fake_vm_factory("vm1"), await fake_vm_factory("vm2", ram=GiB)]
    app = dashboard(fleet_of(*vms))
    async with app.run_test(size=SIZE) as pilot:
        table = await first_poll(pilot, app)
        for vm in vms:
            guest = vm.guest
            assert cell(table, vm.name, "state") == "ok"
            assert cell(table, vm.name, "actual") == size(guest.actual)
            assert cell(table, vm.name, "ram") == size(guest.ram)
            assert cell(table, vm.name, "free") == size(guest.free)
            assert cell(table, vm.name, "cached") == size(guest.cache)
            assert cell(table, vm.name, "avail") == size(guest.available_memory)


async def test_dialog_target_moves_the_fake_balloon(fake_vm_factory: Factory) -> None:
    vm1, vm2 = await fake_vm_factory("vm1"), await fake_vm_factory("vm2")
    app = dashboard(fleet_of(vm1, vm2))
    async with app.run_test(size=SIZE) as pilot:
        table = await first_poll(pilot, app)
        await pilot.press("down", "t")
        await wait_until(pilot, lambda: isinstance(app.screen, SetTargetDialog), what="dialog")
        await pilot.press(*"1.5G", "enter")
        await wait_until(pilot, lambda: vm2.guest.actual == 3 * GiB // 2, what="vm2 inflating")
        await wait_until(pilot, lambda: cell(table, "vm2", "actual") == "1.50G", what="the row")
        assert cell(table, "vm2", "target") == "1.50G"
        assert vm1.guest.actual == 2 * GiB


async def test_bad_sizes_are_refused_and_nothing_reaches_qemu(fake_vm_factory: Factory) -> None:
    vm1 = await fake_vm_factory("vm1")
    app = dashboard(fleet_of(vm1))
    async with app.run_test(size=SIZE) as pilot:
        await first_poll(pilot, app)
        await pilot.press("t")
        await wait_until(pilot, lambda: isinstance(app.screen, SetTargetDialog), what="dialog")
        await pilot.press(*"4G", "enter")
        await pilot.pause()
        assert isinstance(app.screen, SetTargetDialog)
        assert "above guest RAM" in str(app.screen.query_one("#target-verdict").render())
        await pilot.press("escape")
        await pilot.pause()
        assert vm1.guest.balloon_target == 0 and vm1.guest.actual == 2 * GiB


async def test_multi_select_steps_several_fake_vms(fake_vm_factory: Factory) -> None:
    vms = [await fake_vm_factory(f"vm{i}") for i in (1, 2, 3)]
    app = dashboard(fleet_of(*vms), step=256 * MiB)
    async with app.run_test(size=SIZE) as pilot:
        await first_poll(pilot, app)
        await pilot.press("space", "down", "down", "space", "minus")
        want = 2 * GiB - 256 * MiB
        await wait_until(pilot, lambda: vms[0].guest.actual == vms[2].guest.actual == want,
                         what="vm1 and vm3 to deflate")
        assert vms[1].guest.actual == 2 * GiB


async def test_hint_toggle_shows_the_new_mode_and_state(fake_vm_factory: Factory) -> None:
    vm1 = await fake_vm_factory("vm1")
    app = dashboard(fleet_of(vm1))
    async with app.run_test(size=SIZE) as pilot:
        table = await first_poll(pilot, app)
        assert cell(table, "vm1", "hint") == "off (agent)"
        await pilot.press("h")
        await wait_until(pilot, lambda: cell(table, "vm1", "hint") == "on (agent)", what="on")
        await pilot.press("h")
        await wait_until(pilot, lambda: cell(table, "vm1", "hint") == "off (agent)", what="off")


async def test_enable_stats_turns_on_polling(fake_vm_factory: Factory) -> None:
    vm1 = await fake_vm_factory("vm1")
    app = dashboard(fleet_of(vm1), stats_interval=3)
    async with app.run_test(size=SIZE) as pilot:
        await first_poll(pilot, app)
        await pilot.press("s")

        def polling() -> int | None:
            state = app.view.state("vm1")
            return None if state is None else state.polling_interval

        await wait_until(pilot, lambda: polling() == 3, what="polling interval 3")


async def test_a_vm_that_drops_off_shows_why_and_comes_back(fake_vm_factory: Factory) -> None:
    vm1, vm2 = await fake_vm_factory("vm1"), await fake_vm_factory("vm2")
    app = dashboard(fleet_of(vm1, vm2))
    async with app.run_test(size=SIZE) as pilot:
        table = await first_poll(pilot, app)
        await vm2.stop()
        await wait_until(pilot, lambda: cell(table, "vm2", "state").startswith("unreachable:"),
                         what="vm2 unreachable")
        assert table.row_count == 2 and cell(table, "vm1", "state") == "ok"
        assert len(cell(table, "vm2", "state")) > len("unreachable: ")
        await vm2.start()
        await wait_until(pilot, lambda: cell(table, "vm2", "state") == "ok", what="vm2 back")


async def test_hold_mode_logs_balloon_change_events(fake_vm_factory: Factory) -> None:
    vm1 = await fake_vm_factory("vm1")
    app = dashboard(fleet_of(vm1, hold=True))
    async with app.run_test(size=SIZE) as pilot:
        await first_poll(pilot, app)
        await pilot.press("minus")

        def changed() -> bool:
            return any("BALLOON_CHANGE" in e for e in app.view.history["vm1"].events)

        await wait_until(pilot, changed, what="a BALLOON_CHANGE event")


async def test_dashboard_over_http_over_qmp(fake_vm_factory: Factory) -> None:
    vm1, vm2 = await fake_vm_factory("vm1"), await fake_vm_factory("vm2")
    fleet = fleet_of(vm1, vm2)
    transport = httpx.ASGITransport(app=create_app(fleet))
    source = await HttpSource.open("http://agent", transport=transport)
    app = dashboard(source)
    try:
        async with app.run_test(size=SIZE) as pilot:
            table = await first_poll(pilot, app)
            assert cell(table, "vm2", "free") == size(vm2.guest.free)
            await pilot.press("down", "t")
            await wait_until(pilot, lambda: isinstance(app.screen, SetTargetDialog),
                             what="dialog")
            await pilot.press(*"75%", "enter")
            await wait_until(pilot, lambda: vm2.guest.actual == 3 * GiB // 2, what="vm2")
            await wait_until(pilot, lambda: cell(table, "vm2", "actual") == "1.50G", what="row")
            await pilot.press("h")
            await wait_until(pilot, lambda: cell(table, "vm2", "hint") == "on (agent)",
                             what="hint over HTTP")
    finally:
        await fleet.close()


async def test_a_busy_vm_shows_busy_and_the_rest_keep_updating(
    fake_vm_factory: Factory,
) -> None:
    vm1, vm2 = await fake_vm_factory("vm1"), await fake_vm_factory("vm2")
    vm2.faults.never_greet = True  # as if another QMP client held vm2's socket
    app = dashboard(fleet_of(vm1, vm2))
    async with app.run_test(size=SIZE) as pilot:
        table = await first_poll(pilot, app)
        assert cell(table, "vm2", "state").startswith("busy:")
        await pilot.press("minus")  # vm1 keeps answering while vm2 times out every poll
        await wait_until(pilot, lambda: cell(table, "vm1", "actual") == size(2 * GiB - 128 * MiB),
                         what="vm1")
        await pilot.press("down")
        assert table.cursor_vm == "vm2"
        vm2.faults.never_greet = False
        await wait_until(pilot, lambda: cell(table, "vm2", "state") == "ok", what="vm2 free")


async def test_a_socket_that_appears_in_the_watched_directory_becomes_a_row(
    fake_vm_factory: Factory, fake_dir: Path
) -> None:
    vm1 = await fake_vm_factory("vm1")
    inventory = Inventory(scan_dir(fake_dir), watched=str(fake_dir))
    fleet = Fleet(inventory.refs, connect_timeout=1.0, command_timeout=2.0,
                  discover=inventory.rescan)
    app = dashboard(fleet)
    async with app.run_test(size=SIZE) as pilot:
        table = await first_poll(pilot, app)
        assert [r.key.value for r in table.ordered_rows] == [vm1.name]
        vm2 = await fake_vm_factory("vm2", ram=GiB)  # a VM started while the dashboard runs
        await wait_until(pilot, lambda: table.row_count == 2, what="vm2's row")
        await wait_until(pilot, lambda: cell(table, "vm2", "actual") == size(vm2.guest.actual),
                         what="vm2's numbers")
        assert cell(table, "vm2", "ram") == size(GiB)
