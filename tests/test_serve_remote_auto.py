"""The dashboard over balloonctl serve instances that run auto (real uvicorn on unix sockets,
fake fleets on simulated hosts smaller than their guests): each VM's plan and reason come
from its service's stream, auto's changes are logged once per change naming host and VM,
a service that sends malformed decisions is that host's error only, and `A` switches the
selected VMs' hosts. Oracles are the services' own JSON (GET /v1/auto, /v1/history)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from servedapp import serving, short_dir

from balloonctl.cli.hosts_cmd import ServedHosts, served_host
from balloonctl.config import scan_dir
from balloonctl.errors import BadReply
from balloonctl.fake import FakeFleet
from balloonctl.http.client import HttpSource
from balloonctl.http.hosts import MultiHost
from balloonctl.http.wire import stream_item_from_json
from balloonctl.journal import Journal
from balloonctl.units import GiB, format_change, format_exact, format_size_aligned
from tui.app import DashboardApp
from tui.testing import wait_until
from tui.widgets.header import FleetHeader

pytestmark = pytest.mark.timeout(150)

HOSTS = ("hv1", "hv2")


def line_of(host: str, e: dict[str, Any]) -> str:
    """The log line of a journaled auto change (docs/dashboard.md)."""
    before, after = format_change(e["previous"], e["target"])
    action = "shrink" if e["target"] < e["previous"] else "grow"
    return f"{host} {e['vm']}: auto {before} -> {after} ({action}): {e['reason']}"


@pytest.fixture
def root() -> Iterator[Path]:
    with short_dir("ra-") as path:
        yield path


@asynccontextmanager
async def served(root: Path, label: str, *,
                 corrupt: Callable[[dict[str, Any]], None] | None = None,
                 ) -> AsyncIterator[Path]:
    """Two fake 2 GiB VMs on a simulated host of half their RAM, behind a service with
    auto on (a cycle a second), as ``demo --hosts`` builds it; ``corrupt`` rewrites each
    auto line the service streams (a service that sends malformed decisions)."""
    directory = root / label
    fleet = FakeFleet(2, directory, tick=0.01, rate=4 * GiB, ram=2 * GiB, host_mem=2 * GiB,
                      stats_interval=1, workload="compile", seed=7)
    await fleet.start()
    refs = scan_dir(directory)
    service = served_host(refs, journal=Journal(root / f"{label}.jsonl"),
                          host_root=directory / "host", label=label, auto_on=True,
                          cycle=1.0)
    service.interval = 0.2
    if corrupt is not None:
        honest = service._auto_item

        def lying() -> dict[str, Any]:
            item = honest()
            corrupt(item)
            return item

        service._auto_item = lying  # type: ignore[method-assign]
    sock = root / "run" / f"{label}.sock"
    try:
        async with serving(service, sock):
            yield sock
    finally:
        await fleet.stop()


async def get(sock: Path, path: str) -> Any:
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(sock)),
                                 base_url="http://serve") as client:
        response = await client.get(path)
        response.raise_for_status()
        return response.json()


def dashboard(socks: dict[str, Path]) -> tuple[DashboardApp, list[str]]:
    """The dashboard over ``socks``, and every line it logs, as logged (not wrapped)."""
    source = MultiHost([(h, HttpSource(uds=str(s), timeout=5)) for h, s in socks.items()])
    app = DashboardApp(source, interval=0.2, meminfo=None, close_source=True)
    logged: list[str] = []
    log_line = app.main.log_line

    def record(text: str, *, style: str = "") -> None:
        logged.append(text)
        log_line(text, style=style)

    app.main.log_line = record  # type: ignore[method-assign]
    return app, logged


async def test_plan_column_and_detail_show_each_services_decisions(root: Path) -> None:
    async with served(root, "hv1") as s1, served(root, "hv2") as s2:
        socks = {"hv1": s1, "hv2": s2}
        app, _ = dashboard(socks)
        async with app.run_test(size=(200, 50)) as pilot:
            await wait_until(pilot, lambda: len(app.view.rows) == 4, what="four rows")
            table = app.main.table
            table.move_cursor(row=table.get_row_index("hv2/vm1"))

            def shown(key: str, d: dict[str, Any]) -> bool:
                """The row's plan, its cell and (under the cursor) the detail pane say
                what the service's JSON says."""
                row = app.view.rows[key]
                plan = row.plan
                if plan is None or not row.auto or (
                        plan.action.value, plan.target, plan.current, plan.reason) != (
                        d["action"], d["target"], d["current"], d["reason"]):
                    return False
                if d["target"] is None:
                    return str(table.get_cell(key, "plan")) == d["action"]
                arrow = {"shrink": "↓", "grow": "↑"}[d["action"]]
                if str(table.get_cell(key, "plan")) != \
                        f"{arrow}{format_size_aligned(d['target']).strip()}":
                    return False
                if key != table.cursor_vm:
                    return True
                detail = " ".join(str(app.main.query_one("#detail-facts").render()).split())
                exact = format_exact(d["target"], with_bytes=False)
                return f"auto on, plan {d['action']} to {exact}: " \
                    f"{' '.join(d['reason'].split())}" in detail

            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while True:  # the dashboard shows each service's last cycle, row by row
                agree, targets = True, set()
                for host, sock in socks.items():
                    auto = await get(sock, "/v1/auto")
                    assert auto["enabled"] is True
                    for d in auto["decisions"]:
                        agree = agree and shown(f"{host}/{d['name']}", d)
                        if d["target"] is not None:
                            targets.add(f"{host}/{d['name']}")
                if agree and "hv2/vm1" in targets:
                    break
                assert loop.time() < deadline, "the plans never matched the services'"
                await pilot.pause(0.05)


async def test_auto_changes_are_logged_once_naming_host_and_vm(root: Path) -> None:
    async with served(root, "hv1") as s1, served(root, "hv2") as s2:
        socks = {"hv1": s1, "hv2": s2}
        app, logged = dashboard(socks)
        async with app.run_test(size=(160, 40)) as pilot:
            await wait_until(pilot, lambda: len(app.view.rows) == 4, what="four rows")

            async def auto_entries(host: str) -> list[dict[str, Any]]:
                entries = (await get(socks[host], "/v1/history"))["entries"]
                return [e for e in entries if e["origin"]["command"] == "auto"]

            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            expected: dict[str, list[str]] = {}
            while True:
                for host in socks:
                    expected[host] = [line_of(host, e) for e in await auto_entries(host)]
                if all(expected.values()) and all(
                        logged.count(line) == 1 for lines in expected.values()
                        for line in lines):
                    break
                assert loop.time() < deadline, (expected, logged)
                await pilot.pause(0.1)
            # no auto line for a change the services did not journal, none twice
            auto_lines = [line for line in logged if ": auto " in line]
            journaled = [line_of(host, e) for host in socks for e in await auto_entries(host)]
            assert set(auto_lines) <= set(journaled), set(auto_lines) - set(journaled)
            assert len(auto_lines) == len(set(auto_lines))


async def test_malformed_decisions_are_that_hosts_error(root: Path) -> None:
    def bad_target(item: dict[str, Any]) -> None:
        if item["decisions"]:
            item["decisions"][0]["target"] = "lots"

    async with served(root, "hv1") as s1, served(root, "hv2", corrupt=bad_target) as s2:
        app, _ = dashboard({"hv1": s1, "hv2": s2})
        async with app.run_test(size=(200, 40)) as pilot:
            await wait_until(pilot, lambda: len(app.view.rows) == 4, what="four rows")
            status = app.source.host_status  # type: ignore[attr-defined]

            def marked() -> bool:
                hv2 = status()[1]
                return hv2.auto_error is not None and "'target' is not a byte count" \
                    in hv2.auto_error

            def header() -> list[str]:
                return str(app.main.query_one(FleetHeader).render()).splitlines()

            await wait_until(pilot, marked, within=30, what="hv2 marked with the error")
            await wait_until(pilot, lambda: "auto: " in header()[2], what="hv2's line")
            await wait_until(
                pilot, lambda: all(app.view.rows[f"hv1/vm{i}"].plan is not None
                                   for i in (1, 2)), within=30, what="hv1's plans")
            assert status()[0].auto_error is None
            assert marked()  # it stays until hv2 sends a good plan
            lines = header()
            hv2_line = next(line for line in lines if line.startswith("hv2 "))
            assert "auto: " in hv2_line and "'target' is not a byte count" in hv2_line
            assert "auto: " not in next(line for line in lines if line.startswith("hv1 "))
            assert all(app.view.rows[f"hv2/vm{i}"].plan is None for i in (1, 2))
            # hv2's VMs are still polled: its rows keep working
            polls = app.polls
            await wait_until(pilot, lambda: app.polls > polls + 2, what="more polls")
            assert all(app.view.rows[f"hv2/vm{i}"].state.reachable for i in (1, 2))


async def test_auto_key_switches_the_selected_vms_hosts(root: Path) -> None:
    async with served(root, "hv1") as s1, served(root, "hv2") as s2:
        app, logged = dashboard({"hv1": s1, "hv2": s2})
        async with app.run_test(size=(160, 40)) as pilot:
            await wait_until(pilot, lambda: all(r.auto for r in app.view.rows.values())
                             and len(app.view.rows) == 4, within=30, what="auto on")
            table = app.main.table
            table.move_cursor(row=table.get_row_index("hv2/vm1"))
            await pilot.press("space", "A")
            await wait_until(pilot, lambda: any(line.startswith("hv2: auto off")
                                                for line in logged), what="hv2 switched")
            assert (await get(s2, "/v1/auto"))["enabled"] is False
            assert (await get(s1, "/v1/auto"))["enabled"] is True
            await wait_until(pilot, lambda: not app.view.rows["hv2/vm2"].auto,
                             what="hv2's rows not bold")
            assert app.view.rows["hv1/vm1"].auto
            assert "auto on 1/2 hosts" in app.main.auto_status
            await pilot.press("A")  # off for the selection: on again
            await wait_until(pilot, lambda: sum(line.startswith("hv2: auto on")
                                                for line in logged) == 1, what="hv2 on")
            assert (await get(s2, "/v1/auto"))["enabled"] is True
            assert not any(line.startswith("hv1: ") for line in logged)


def test_demo_hosts_balloon_and_hint_half_of_each_host(root: Path) -> None:
    """``demo --hosts 3``'s services: within 30 s every host has a VM ballooned below its
    RAM (each host is smaller than its guests), and the hint is on for vm1, vm3 and vm5."""
    with ServedHosts(root, 3, vms=6, ram=2 * GiB, workload="compile").running() as hosts:
        async def watch() -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            socks = [Path(ep.uds or "") for ep in hosts.endpoints]
            while True:
                listings = [await get(s, "/v1/vms") for s in socks]
                hints = [{vm["name"] for vm in vms if vm["hint_enabled"]} for vms in listings]
                if hints == [{"vm1", "vm3", "vm5"}] * 3 and all(
                        any(vm["actual"] < vm["guest_ram"] for vm in vms)
                        for vms in listings):
                    return
                assert loop.time() < deadline, (hints, [
                    [(vm["name"], vm["actual"]) for vm in vms] for vms in listings])
                await asyncio.sleep(0.2)  # polling the services' state, not waiting for it

        asyncio.run(watch())


@pytest.mark.parametrize(("line", "why"), [
    ([], "a line is not an object"),
    ({"type": "auto", "cycle": "3", "enabled": True, "decisions": []}, "'cycle'"),
    ({"type": "auto", "cycle": 3, "enabled": 1, "decisions": []}, "'enabled'"),
    ({"type": "auto", "cycle": 3, "enabled": True, "decisions": {}}, "'decisions'"),
    ({"type": "auto", "cycle": 3, "enabled": True, "decisions": [7]}, "not an object"),
    ({"type": "auto", "cycle": 3, "enabled": True,
      "decisions": [{"name": "vm1", "action": "explode", "target": None, "current": 1,
                     "reason": ""}]}, "'action'"),
    ({"type": "auto", "cycle": 3, "enabled": True,
      "decisions": [{"name": "vm1", "action": "shrink", "target": -1, "current": 1,
                     "reason": ""}]}, "'target'"),
    ({"type": "auto", "cycle": 3, "enabled": True,
      "decisions": [{"name": "vm1", "action": "hold", "target": None, "current": True,
                     "reason": ""}]}, "'current'"),
    ({"type": "auto", "cycle": 3, "enabled": True,
      "decisions": [{"name": "", "action": "hold", "target": None, "current": 1,
                     "reason": ""}]}, "'name'"),
    ({"type": "auto", "cycle": 3, "enabled": True,
      "decisions": [{"name": "vm1", "action": "hold", "target": None, "current": 1,
                     "reason": None}]}, "'reason'"),
    ({"type": "event", "vm": None, "event": "AUTO_CHANGE", "data": {}}, "'vm'"),
    ({"type": "event", "vm": "vm1", "event": "AUTO_CHANGE", "data": []}, "'data'"),
    ({"type": "event", "vm": "vm1", "event": "AUTO_CHANGE",
      "data": {"action": "shrink", "previous": 2, "target": "1", "reason": "r"}}, "'target'"),
    ({"type": "event", "vm": "vm1", "event": "AUTO_FOREIGN",
      "data": {"previous": None, "actual": 5}}, "'why'"),
    ({"type": "event", "vm": "vm1", "event": "AUTO_FAILED", "data": {}}, "'error'"),
])
def test_wrong_shapes_on_the_stream_are_bad_replies(line: Any, why: str) -> None:
    with pytest.raises(BadReply, match=why):
        stream_item_from_json(line)


def test_well_formed_stream_lines_parse() -> None:
    plan = stream_item_from_json({"type": "auto", "cycle": 0, "enabled": False, "decisions": [
        {"name": "vm1", "action": "shrink", "target": 0, "current": 5, "reason": "r"}]})
    assert plan is not None and not isinstance(plan, tuple)
    assert (plan.number, plan.enabled, plan.decisions[0].target) == (0, False, 0)
    assert stream_item_from_json({"type": "snapshot", "vms": []}) is None
    vm, event = stream_item_from_json({"type": "event", "vm": "vm2", "event": "AUTO_CHANGE",
                                       "data": {"action": "grow", "previous": None,
                                                "target": 5, "reason": "r"}})  # type: ignore[misc]
    assert vm == "vm2" and event.data["change"].line() == "vm2: ? -> 5 B (grow): r"
