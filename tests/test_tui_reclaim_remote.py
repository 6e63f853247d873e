"""The dashboard's `R` over balloonctl serve instances (real uvicorn on unix sockets, fake
fleets): the selected VM is taken back on its host's service (``POST
/v1/vms/NAME/reclaim``) and the log has the result line, as with a local auto; a service
without auto answers with its error line; a source that can do neither says so."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from servedapp import serving, short_dir

from balloonctl.auto import AutoController
from balloonctl.changes import JournalRecorder
from balloonctl.config import scan_dir
from balloonctl.fake import FakeFleet
from balloonctl.fleet import Fleet
from balloonctl.http.client import HttpSource
from balloonctl.http.hosts import MultiHost
from balloonctl.journal import Journal, Origin
from balloonctl.policy import PolicySettings
from balloonctl.serve import SERVE_REASON, HostService
from balloonctl.units import GiB, MiB, parse_target
from tui.app import DashboardApp
from tui.testing import StaticSource, sample_states, wait_until

pytestmark = pytest.mark.timeout(120)

POLICY = PolicySettings(cycle=0.5, psi_threshold=99.0)


@pytest.fixture
def root() -> Iterator[Path]:
    with short_dir("rr-") as path:
        yield path


@asynccontextmanager
async def served(root: Path, label: str, *, auto: bool
                 ) -> AsyncIterator[tuple[Path, HostService, FakeFleet]]:
    """Two idle 2 GiB VMs on a roomy simulated host behind a service: auto wired and off,
    or left out (``serve --no-auto``)."""
    directory = root / label
    fleet = FakeFleet(2, directory, tick=0.01, rate=4 * GiB, ram=2 * GiB, host_mem=8 * GiB,
                      stats_interval=1)
    await fleet.start()
    refs = scan_dir(directory)
    journal = Journal(root / f"{label}.jsonl")
    source = Fleet(refs, hold=True,
                   recorder=JournalRecorder(journal, Origin.SET, SERVE_REASON))
    controller = None
    if auto:
        controller = AutoController(source, settings=POLICY, host_root=directory / "host",
                                    journal=journal)
        controller.enabled = set()
    service = HostService(source, refs=refs, interval=0.2, host_root=directory / "host",
                          journal=journal, policy=POLICY, auto=controller, label=label)
    sock = root / "run" / f"{label}.sock"
    try:
        async with serving(service, sock):
            yield sock, service, fleet
    finally:
        await fleet.stop()


def recording(app: DashboardApp) -> list[str]:
    """Every line ``app`` logs, as logged."""
    logged: list[str] = []
    log_line = app.main.log_line

    def record(text: str, *, style: str = "") -> None:
        logged.append(text)
        log_line(text, style=style)

    app.main.log_line = record  # type: ignore[method-assign]
    return logged


async def test_r_takes_the_selected_vm_back_on_its_hosts_service(root: Path) -> None:
    async with served(root, "hv1", auto=False) as (s1, _, _), \
            served(root, "hv2", auto=True) as (s2, service, fleet):
        # hv2's vm1: set through its service, then moved by another writer (the fake's device)
        async with HttpSource(uds=str(s2)) as hv2:
            await hv2.set_target("vm1", parse_target("1.5G"))
            await asyncio.wait_for(_owner(hv2, "balloonctl", actual=1536 * MiB), 20)
            fleet["vm1"].device.set_target(GiB)  # type: ignore[union-attr]
            await asyncio.wait_for(_owner(hv2, "foreign"), 20)
            await hv2.post("/auto", {"enabled": True})
        source = MultiHost([("hv1", HttpSource(uds=str(s1), timeout=5)),
                            ("hv2", HttpSource(uds=str(s2), timeout=5))])
        app = DashboardApp(source, interval=0.2, meminfo=None, close_source=True)
        logged = recording(app)
        async with app.run_test(size=(160, 40)) as pilot:
            await wait_until(pilot, lambda: len(app.view.rows) == 4, what="four rows")
            table = app.main.table
            table.move_cursor(row=table.get_row_index("hv2/vm1"))
            await pilot.press("R")
            await wait_until(pilot, lambda: "hv2/vm1: taken back: auto manages it again"
                             in logged, what="the result line")
            assert not service.foreign("vm1")  # the service's own view: no longer foreign
            await pilot.press("R")  # nothing marked any more
            await wait_until(pilot, lambda: "hv2/vm1: not marked as moved by another writer"
                             in logged, what="the second result line")
            table.move_cursor(row=table.get_row_index("hv1/vm2"))
            await pilot.press("R")  # hv1 runs without auto: its error, in the log
            await wait_until(pilot, lambda: any(
                line.startswith("hv1/vm2: take back failed: auto is not available here")
                for line in logged), what="hv1's refusal")
            assert not any(line.startswith(("hv1/vm1", "hv2/vm2")) for line in logged)


async def _owner(source: HttpSource, owner: str, *, actual: int | None = None) -> None:
    """Until the service's listing shows vm1 with ``owner`` (and ``actual``)."""
    while True:
        state = await source.state("vm1")
        if state.to_json()["owner"] == owner and actual in (None, state.actual):
            return
        await asyncio.sleep(0.05)  # polling the service's state, bounded by wait_for


async def test_r_without_auto_or_a_service_says_so() -> None:
    app = DashboardApp(StaticSource(sample_states(2)), interval=0.2, meminfo=None)
    logged = recording(app)
    async with app.run_test(size=(160, 40)) as pilot:
        await wait_until(pilot, lambda: len(app.view.rows) == 2, what="two rows")
        await pilot.press("R")
        await wait_until(pilot, lambda: bool(logged), what="a line")
        assert logged == ["Taking a VM back needs automatic ballooning (here or a service's)"]
