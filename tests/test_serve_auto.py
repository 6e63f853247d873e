"""Automatic ballooning inside balloonctl serve: ``balloonctl.auto.AutoController`` wired into
a HostService over a fake fleet on a simulated host under pressure, switched through
``/v1/auto``, journaling through the same journal as the CLI, counted in ``/metrics``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from idlefleet import idle_fleet
from prometheus_client.parser import text_string_to_metric_families
from waiting import wait_until

from balloonctl.auto import AutoController
from balloonctl.changes import JournalRecorder
from balloonctl.config import scan_dir
from balloonctl.fake import FakeFleet
from balloonctl.fleet import Fleet
from balloonctl.host import host_root_for, read_host
from balloonctl.journal import Journal, Origin
from balloonctl.policy import PolicySettings
from balloonctl.serve import SERVE_REASON, HostService, create_app
from balloonctl.store import FileStore
from balloonctl.units import GiB, MiB

pytestmark = pytest.mark.timeout(90)

RAM = 2 * GiB
# Half-second cycles, big steps; PSI lags (a 10 s average), so only available memory counts.
POLICY = PolicySettings(cycle=0.5, max_step=512 * MiB, psi_threshold=99.0)



@pytest.fixture
async def fake_fleet(fake_dir: Path) -> AsyncIterator[FakeFleet]:
    """Three idle 2 GiB guests on a simulated 4 GiB host (no KSM, no swap)."""
    async with idle_fleet(fake_dir, ram=RAM, host_mem=4 * GiB) as fleet:
        yield fleet


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "journal.jsonl")


@pytest.fixture
def service(fake_fleet: FakeFleet, fake_dir: Path, tmp_path: Path,
            journal: Journal) -> HostService:
    """Built as ``balloonctl serve`` builds it, auto wired and off."""
    refs = scan_dir(fake_dir)
    fleet = Fleet(refs, hold=True, store=FileStore(tmp_path / "state.json"),
                  recorder=JournalRecorder(journal, Origin.SET, SERVE_REASON))
    auto = AutoController(fleet, settings=POLICY, host_root=host_root_for(fake_dir),
                          journal=journal)
    auto.enabled = set()
    return HostService(fleet, refs=refs, interval=0.2, host_root=host_root_for(fake_dir),
                       journal=journal, policy=POLICY, auto=auto, label="hv1")


@pytest.fixture
async def api(service: HostService) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(service)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hv1") as client:
            yield client


def available(fake_dir: Path) -> float:
    return read_host(host_root_for(fake_dir)).available_fraction


async def squeeze(fleet: FakeFleet, fake_dir: Path) -> None:
    """Every guest touches 1.3 GiB and frees it: the host holds those pages (4.8 GiB of
    guests' pages on a 4 GiB host) while the guests see them as free."""
    for vm in fleet.vms:
        vm.guest.release_anon(vm.guest.alloc(1300 * MiB))
    await wait_until(lambda: available(fake_dir) < 0.15, within=10)


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    for family in text_string_to_metric_families(text):
        if family.name == name:
            return {tuple(sorted(s.labels.items())): s.value for s in family.samples
                    if not s.name.endswith("_created")}
    raise AssertionError(f"{name} not exported")


async def test_auto_on_through_the_api_inflates_under_pressure_and_journals_auto(
    api: httpx.AsyncClient, service: HostService, fake_fleet: FakeFleet, fake_dir: Path,
    journal: Journal,
) -> None:
    for name in ("vm1", "vm2", "vm3"):  # the policy needs the guests' stats
        assert (await api.post(f"/v1/vms/{name}/stats", json={"interval": 1})).status_code == 200
    await squeeze(fake_fleet, fake_dir)
    off = (await api.get("/v1/auto")).json()
    assert (off["enabled"], off["cycle"], off["cycles"]) == (False, 0.5, 0)
    # while off, polls go on and no cycle runs: nothing is sent, nothing journaled
    polls = service.health.polls
    await wait_until(lambda: service.health.polls >= polls + 5, within=10)  # 1 s: 2 cycles
    assert service.health.auto_cycles == 0 and journal.read().entries == ()
    assert all(vm.guest.balloon_target == 0 for vm in fake_fleet.vms)

    on = await api.post("/v1/auto", json={"enabled": True})
    assert (on.status_code, on.json()["enabled"]) == (200, True)
    await wait_until(lambda: any(e.origin is Origin.AUTO for e in journal.read().entries),
                     within=20)
    entries = [e for e in journal.read().entries if e.origin is Origin.AUTO]
    assert entries and all(e.target < RAM and e.previous == RAM for e in entries)
    assert all(" < 15 %: reclaim " in e.reason for e in entries)
    # the balloons really move: a guest's actual goes down to what auto set
    moved = {e.vm: e.target for e in entries}
    await wait_until(lambda: all(fake_fleet[n].guest.actual <= t for n, t in moved.items()),
                     within=20)
    status = (await api.get("/v1/auto")).json()
    assert status["enabled"] is True and status["cycles"] >= 1 and status["stopped"] is None
    assert {d["name"] for d in status["decisions"]} == {"vm1", "vm2", "vm3"}
    history = (await api.get("/v1/history")).json()["entries"]
    assert any(h["origin"]["command"] == "auto" for h in history)

    text = (await api.get("/metrics")).text
    assert samples(text, "balloonctl_auto_enabled") == {(): 1.0}
    assert samples(text, "balloonctl_auto_cycles")[()] >= 1
    shrinks = samples(text, "balloonctl_auto_changes")[(("action", "shrink"),)]
    assert shrinks == service.health.auto_changes["shrink"] >= len(moved)
    decided = samples(text, "balloonctl_auto_decisions")
    assert sum(decided.values()) >= 3 * service.health.auto_cycles

    # off again: no further cycle runs
    off = await api.post("/v1/auto", json={"enabled": False})
    assert off.json()["enabled"] is False
    cycles, polls = service.health.auto_cycles, service.health.polls
    await wait_until(lambda: service.health.polls >= polls + 5, within=10)
    assert service.health.auto_cycles == cycles
    text = (await api.get("/metrics")).text
    assert samples(text, "balloonctl_auto_enabled") == {(): 0.0}


async def test_a_journal_that_cannot_be_written_switches_auto_off(
    api: httpx.AsyncClient, service: HostService, fake_fleet: FakeFleet, fake_dir: Path,
    tmp_path: Path,
) -> None:
    for name in ("vm1", "vm2", "vm3"):
        await api.post(f"/v1/vms/{name}/stats", json={"interval": 1})
    await squeeze(fake_fleet, fake_dir)
    (tmp_path / "journal.jsonl").mkdir()  # a directory where the journal file should be
    await api.post("/v1/auto", json={"enabled": True})
    await wait_until(lambda: not service.auto_on, within=20)
    status = (await api.get("/v1/auto")).json()
    assert status["enabled"] is False and "journal" in status["stopped"]
    assert all(vm.guest.balloon_target == 0 for vm in fake_fleet.vms)  # nothing unrecorded
    text = (await api.get("/metrics")).text
    assert samples(text, "balloonctl_serve_errors")[
        (("kind", "JournalError"), ("where", "auto"))] == 1.0
