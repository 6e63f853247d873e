"""The dashboard over three balloonctl serve instances (real uvicorn on unix sockets, fake
fleets with simulated hosts): a row per VM named HOST/VM with the host in its own column, a
line per host whose totals are the sums of its VMs' figures in the service's own JSON, and a
service that stops and restarts while the dashboard runs."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from servedapp import serving
from test_cli_process import BALLOONCTL

from balloonctl.config import scan_dir
from balloonctl.fake import FakeFleet
from balloonctl.fleet import Fleet
from balloonctl.http.client import HttpSource
from balloonctl.http.hosts import MultiHost
from balloonctl.model import VmStatus
from balloonctl.serve import HostService
from balloonctl.units import GiB, format_size, parse_target
from tui.app import DashboardApp
from tui.fleetview import HostTotals
from tui.testing import wait_until
from tui.widgets.header import FleetHeader

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="bh-", dir="/tmp"))  # short socket paths
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@asynccontextmanager
async def served(directory: Path, sock: Path, label: str) -> AsyncIterator[uvicorn.Server]:
    """A HostService over the fake VMs in ``directory``, served on ``sock`` until exit."""
    refs = scan_dir(directory)
    service = HostService(Fleet(refs, hold=True), refs=refs, interval=0.2,
                          host_root=directory / "host", label=label)
    async with serving(service, sock) as server:
        yield server


def header_text(app: DashboardApp) -> str:
    return str(app.main.query_one(FleetHeader).render())


def rows_of(app: DashboardApp, host: str) -> list[VmStatus]:
    return [row.state.status for name, row in sorted(app.view.rows.items())
            if name.startswith(f"{host}/")]


async def test_three_hosts_in_one_dashboard_and_a_restart(root: Path) -> None:
    fleets = [FakeFleet(2, root / f"hv{i}", tick=0.01, rate=4 * GiB, ram=2 * GiB,
                        host_mem=(4 + i) * GiB) for i in (1, 2, 3)]
    for fleet in fleets:
        await fleet.start()
    socks = [root / "run" / f"hv{i}.sock" for i in (1, 2, 3)]
    try:
        async with served(fleets[0].directory, socks[0], "hv1"), \
                served(fleets[2].directory, socks[2], "hv3"):
            hv2 = served(fleets[1].directory, socks[1], "hv2")
            await hv2.__aenter__()
            source = MultiHost([(f"hv{i}", HttpSource(uds=str(s), timeout=5))
                                for i, s in zip((1, 2, 3), socks, strict=True)])
            app = DashboardApp(source, interval=0.2, meminfo=None, close_source=True)
            async with app.run_test(size=(160, 40)) as pilot:
                await wait_until(pilot, lambda: len(app.view.rows) == 6, what="six rows")
                assert sorted(app.view.rows) == [f"hv{h}/vm{v}" for h in (1, 2, 3)
                                                 for v in (1, 2)]
                await wait_until(pilot, lambda: "hv3  VMs 2/2" in header_text(app),
                                 what="a line per host")
                text = header_text(app)
                assert "hv1  VMs 2/2" in text and "hv2  VMs 2/2" in text
                assert "host 5 GiB" in text and "host 7 GiB" in text  # each host's own
                # hv2's service goes away: its rows stay, marked unreachable
                await hv2.__aexit__(None, None, None)
                down = [VmStatus.UNREACHABLE] * 2
                await wait_until(pilot, lambda: rows_of(app, "hv2") == down,
                                 what="hv2's rows unreachable")
                assert len(app.view.rows) == 6
                assert VmStatus.UNREACHABLE not in rows_of(app, "hv1") + rows_of(app, "hv3")
                await wait_until(pilot, lambda: "unreachable" in header_text(app),
                                 what="hv2's line says unreachable")
                lines = {line.split()[0]: line for line in header_text(app).splitlines()[1:]}
                assert lines["hv2"].startswith("hv2  VMs 0/2  unreachable: ")
                assert "unreachable" not in lines["hv1"] + lines["hv3"]
                assert "VMs 2/2" in lines["hv1"] and "VMs 2/2" in lines["hv3"]
                # ... and comes back
                async with served(fleets[1].directory, socks[1], "hv2"):
                    await wait_until(
                        pilot, lambda: VmStatus.UNREACHABLE not in rows_of(app, "hv2"),
                        what="hv2's rows back")
                    await wait_until(pilot, lambda: "unreachable" not in header_text(app),
                                     what="hv2's line back")
                    # acting on a row goes to the right host's service
                    await source.set_target("hv2/vm1", parse_target("1.5G"))
                    assert fleets[1]["vm1"].guest.balloon_target == GiB // 2
                    assert fleets[0]["vm1"].guest.balloon_target == 0
    finally:
        for fleet in fleets:
            await fleet.stop()


def test_demo_hosts_once_shows_every_host(tmp_path: Path) -> None:
    done = subprocess.run([BALLOONCTL, "demo", "--hosts", "3", "--vms", "2", "--once",
                           "--json"], capture_output=True, text=True, timeout=120,
                          check=False, env={"PATH": "/usr/bin:/bin",
                                            "BALLOONCTL_STATE": str(tmp_path / "state.json"),
                                            "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    vms = json.loads(done.stdout)
    assert [vm["name"] for vm in vms] == [f"hv{h}/vm{v}" for h in (1, 2, 3) for v in (1, 2)]
    # docs/cli.md: the hint on for vm1 (vm3, vm5) of each host, stats polled every second;
    # the one view shows that set-up done, not a poll from before it
    assert [vm["hint_enabled"] for vm in vms] == [True, False] * 3
    assert [vm["polling_interval"] for vm in vms] == [1] * 6
    assert "stale" not in [vm["status"] for vm in vms]


async def totals_from_json(sock: Path, host: str) -> HostTotals:
    """The oracle: a host's line from ``GET /v1/vms`` by docs/dashboard.md's rules (sums
    over the VMs that answer; free and cached never counted above ``actual``)."""
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(sock)),
                                 base_url="http://serve") as client:
        vms = (await client.get("/v1/vms")).json()
    up = [vm for vm in vms if vm["reachable"]]
    free = cached = 0
    for vm in up:
        if vm["driver_ready"]:
            room = min(vm["actual"], vm["guest_ram"])
            free += min(vm["free_memory"], room)
            cached += min(vm["disk_caches"], room - min(vm["free_memory"], room))
    return HostTotals(host, len(vms), len(up), sum(vm["guest_ram"] for vm in up),
                      sum(vm["actual"] for vm in up), free, cached)


def full_line(t: HostTotals) -> str:
    return (f"{t.host}  VMs {t.reachable}/{t.vms}  guest RAM {format_size(t.guest_ram)}"
            f"  actual {format_size(t.actual)}  free {format_size(t.free)}"
            f"  cached {format_size(t.cached)}  │  host ")


async def test_host_column_and_per_host_totals_from_the_services_figures(root: Path) -> None:
    # guest RAM differs per host (1, 2, 3 GiB), so a sum taken over the wrong host shows
    fleets = [FakeFleet(2, root / f"hv{i}", tick=0.01, rate=4 * GiB, ram=i * GiB,
                        host_mem=(4 + i) * GiB, stats_interval=1) for i in (1, 2, 3)]
    for fleet in fleets:
        await fleet.start()
    socks = [root / "run" / f"hv{i}.sock" for i in (1, 2, 3)]
    hosts = ["hv1", "hv2", "hv3"]
    try:
        async with served(fleets[0].directory, socks[0], "hv1"), \
                served(fleets[1].directory, socks[1], "hv2"), \
                served(fleets[2].directory, socks[2], "hv3"):
            source = MultiHost([(h, HttpSource(uds=str(s), timeout=5))
                                for h, s in zip(hosts, socks, strict=True)])
            app = DashboardApp(source, interval=0.2, meminfo=None, close_source=True)
            async with app.run_test(size=(160, 40)) as pilot:
                await wait_until(pilot, lambda: len(app.view.rows) == 6, what="six rows")
                table = app.main.table
                for host in hosts:
                    for vm in ("vm1", "vm2"):
                        key = f"{host}/{vm}"
                        assert (table.get_cell(key, "host"), table.get_cell(key, "name")) \
                            == (host, vm)
                # grouped by host; the VM column sorts by the VMs' own names across hosts
                assert [str(r.key.value) for r in table.ordered_rows] == [
                    f"{h}/{v}" for h in hosts for v in ("vm1", "vm2")]
                await pilot.press("1")
                await pilot.pause()
                assert [str(r.key.value) for r in table.ordered_rows] == [
                    f"{h}/{v}" for v in ("vm1", "vm2") for h in hosts]
                await pilot.press("H", "H")  # by host, reversed
                await pilot.pause()
                assert [str(r.key.value) for r in table.ordered_rows] == [
                    f"{h}/{v}" for h in reversed(hosts) for v in ("vm2", "vm1")]
                # the filter matches the host column
                app.main.query_one("#filter").value = "hv2"  # type: ignore[attr-defined]
                await wait_until(pilot, lambda: table.row_count == 2, what="hv2's rows")
                assert {str(r.key.value) for r in table.ordered_rows} == {"hv2/vm1",
                                                                            "hv2/vm2"}
                app.main.query_one("#filter").value = ""  # type: ignore[attr-defined]
                # a balloon moved on hv2 only: its actual sum differs from its RAM's
                await source.set_target("hv2/vm1", parse_target("1.5G"))
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 30
                while True:
                    expected = [await totals_from_json(s, h)
                                for h, s in zip(hosts, socks, strict=True)]
                    got = app.view.host_totals(hosts)
                    if got == expected and expected[1].actual == 2 * 2 * GiB - GiB // 2 \
                            and all(t.free > 0 for t in expected):
                        break
                    assert loop.time() < deadline, (got, expected)
                    await pilot.pause(0.1)
                text = header_text(app)
                for t in got:
                    assert full_line(t) in text, (full_line(t), text)
                # each host's own memory, as its service reports it
                assert "host 5 GiB  available" in text and "host 7 GiB  available" in text
                assert text.count("KSM saved") == 3 and text.count("PSI some") == 3
                # the detail pane names the host
                host, _, vm = (table.cursor_vm or "").partition("/")
                detail = str(app.main.query_one("#detail-facts").render())
                assert host in hosts and detail.startswith(f"{vm} on host {host}  "), detail
    finally:
        for fleet in fleets:
            await fleet.stop()


async def test_demo_hosts_fit_80x24_with_the_footer(root: Path) -> None:
    """``demo --hosts 3``'s services (six VMs each) at 80x24: a line per host, not wrapped,
    with its memory; the host and VM columns; the footer's help and quit."""
    from balloonctl.cli.hosts_cmd import ServedHosts, multi_host
    from tui.testing import screen_text

    with ServedHosts(root, 3, vms=6, ram=2 * GiB, workload="compile").running() as served_:
        app = DashboardApp(multi_host(served_.endpoints), interval=0.5, meminfo=None,
                           close_source=True)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_until(pilot, lambda: len(app.view.rows) == 18, what="18 rows")
            await wait_until(pilot, lambda: "KSM" in screen_text(app)[3], within=20,
                             what="every host's memory")
            # the footer is composed again after the first focus: wait for it
            await wait_until(pilot, lambda: "q Quit" in screen_text(app)[-1],
                             what="the footer")
            lines = screen_text(app)
            assert len(lines) == 24
            for i, host in enumerate(("hv1", "hv2", "hv3"), start=1):
                assert lines[i].startswith(f" {host} 6/6 act "), lines[i]
                assert " free " in lines[i] and " cache " in lines[i]
                assert "│ host " in lines[i] and " av " in lines[i] and " PSI " in lines[i]
            assert lines[4].lstrip().startswith("filter")
            assert lines[5].split()[:2] == ["host", "VM"]
            assert lines[6].split()[:2] == ["hv1", "vm1"]
            assert "? Help" in lines[-1] and "q Quit" in lines[-1], "\n".join(lines)
