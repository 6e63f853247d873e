"""The dashboard's automatic ballooning against a fake fleet on a simulated host: the plan
column and the detail pane show decisions and reasons, ``A`` switches auto on (the balloons
move, the event log says so, the journal has it) and off again."""

from __future__ import annotations

from pathlib import Path

from balloonctl.auto import AutoController
from balloonctl.config import scan_dir
from balloonctl.fake import FakeFleet
from balloonctl.fleet import Fleet
from balloonctl.host import host_root_for, read_host
from balloonctl.journal import Journal, Origin, read_journal
from balloonctl.policy import PolicySettings
from balloonctl.store import FileStore
from balloonctl.units import GiB, MiB
from tests.rawqmp import poll_until
from tests.test_tui_fake import SIZE, cell
from tui.app import DashboardApp
from tui.testing import wait_until

RAM = 2 * GiB


async def test_auto_plans_then_applies_when_switched_on(fake_dir: Path, tmp_path: Path) -> None:
    # the guests report every second: planning sends nothing, not even a polling interval,
    # and a VM whose polling is off plans `leave` (stale) until `s` or auto turns it on
    fake = FakeFleet(2, fake_dir, ram=RAM, host_mem=3 * GiB,
                     host={"ksm_run": False, "ksm_fraction": 0.0}, tick=0.01, rate=4 * GiB,
                     stats_interval=1)
    await fake.start()
    try:
        for vm in fake.vms:  # the guests touch memory and free it: the host is short
            vm.guest.release_anon(vm.guest.alloc(1200 * MiB))
        root = host_root_for(fake_dir)
        await poll_until(lambda: read_host(root).available_fraction < 0.15, what="pressure")
        fleet = Fleet(scan_dir(fake_dir), store=FileStore(tmp_path / "state.json"),
                      connect_timeout=1.0, command_timeout=2.0)
        journal = tmp_path / "journal.jsonl"
        auto = AutoController(fleet, settings=PolicySettings(cycle=1.0, psi_threshold=99.0),
                              host_root=root, journal=Journal(journal))
        auto.enabled = set()  # planning only, as `balloonctl dashboard` starts
        app = DashboardApp(fleet, interval=0.2, meminfo=None, host_root=root, auto=auto,
                           auto_interval=0.3, close_source=True)
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: app.auto_cycles >= 1 and app.polls >= 1,
                             what="a plan")
            table = app.main.table
            await wait_until(pilot, lambda: cell(table, "vm1", "plan").startswith("↓"),
                             what="the plan column")
            assert all(vm.guest.actual == RAM for vm in fake.vms)  # planned, not sent
            assert not journal.exists()
            facts = str(app.main._detail._facts.render())
            assert "auto off, plan shrink to " in facts and "host available " in facts

            await pilot.press("A")  # no selection: the whole fleet
            await wait_until(pilot, lambda: all(vm.guest.actual < RAM for vm in fake.vms),
                             what="the balloons inflating")
            entries = read_journal(journal).entries
            assert {e.vm for e in entries} == {"vm1", "vm2"}
            assert {e.origin for e in entries} == {Origin.AUTO}
            log = "\n".join(line.text for line in app.main._log.lines)
            assert "auto vm1: 2 GiB -> " in log and "(shrink): host available " in log
            assert "auto on 2/2" in str(app.main._status.render())

            await pilot.press("A")  # and off again: nothing more is sent
            await wait_until(pilot, lambda: "auto off 0/2" in str(app.main._status.render()),
                             what="auto off")
            sent = len(read_journal(journal).entries)
            cycles = app.auto_cycles
            await wait_until(pilot, lambda: app.auto_cycles >= cycles + 2, what="more plans")
            assert len(read_journal(journal).entries) == sent
    finally:
        await fake.stop()
