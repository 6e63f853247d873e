"""``auto`` against the fake fleet on a simulated host: pressure rises and falls, a guest
swaps, another writer moves a balloon, the journal cannot be written."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from idlefleet import idle_fleet

import balloonctl.store as store_module
from balloonctl.auto import AutoController, Cycle
from balloonctl.config import scan_dir
from balloonctl.errors import JournalError
from balloonctl.fake import FakeFleet
from balloonctl.fleet import Fleet
from balloonctl.host import host_root_for, read_host
from balloonctl.journal import Journal, Origin, read_journal
from balloonctl.model import Owner
from balloonctl.policy import Action, PolicySettings
from balloonctl.store import FileStore
from balloonctl.units import GiB, MiB
from tests.rawqmp import RawQMP, poll_until

RAM = 2 * GiB
# One cycle per second (stats polling follows it), big steps so a test needs few cycles.
# The simulated host's PSI averages lag (avg10 is a 10 s average), as a real kernel's do:
# these tests watch available memory alone (PSI has tests of its own in test_policy).
SETTINGS = PolicySettings(cycle=1.0, max_step=512 * MiB, psi_threshold=99.0)


@pytest.fixture
async def fake_fleet(fake_dir: Path) -> AsyncIterator[FakeFleet]:
    """Three idle 2 GiB guests on a simulated 4 GiB host (no KSM, no swap)."""
    async with idle_fleet(fake_dir, ram=RAM, host_mem=4 * GiB) as fleet:
        yield fleet


@pytest.fixture
async def controller(fake_fleet: FakeFleet, fake_dir: Path,
                     tmp_path: Path) -> AsyncIterator[AutoController]:
    fleet = Fleet(scan_dir(fake_dir), store=FileStore(tmp_path / "state.json"),
                  connect_timeout=1.0, command_timeout=2.0)
    for name in fleet.names:
        await fleet.enable_stats(name, 1)
    auto = AutoController(fleet, settings=SETTINGS, host_root=host_root_for(fake_dir),
                          journal=Journal(tmp_path / "journal.jsonl"))
    try:
        yield auto
    finally:
        await fleet.close()


def available(fake_dir: Path) -> float:
    return read_host(host_root_for(fake_dir)).available_fraction


async def cycle_until(auto: AutoController, done: Callable[[Cycle], bool], *,
                      cycles: int = 12, gap: float = 1.1) -> list[Cycle]:
    """Cycles ``gap`` s apart (the guests report stats every second) until ``done``."""
    seen: list[Cycle] = []
    for _ in range(cycles):
        seen.append(await auto.cycle())
        if done(seen[-1]):
            return seen
        await asyncio.sleep(gap)  # the cycle length, as `auto` waits between cycles
    raise AssertionError(f"not done after {cycles} cycles: "
                         f"{[d.reason for d in seen[-1].decisions]}")


def decision(cycle: Cycle, name: str) -> Action:
    return next(d.action for d in cycle.decisions if d.name == name)


async def squeeze(fleet: FakeFleet, fake_dir: Path) -> None:
    """Every guest touches 1.3 GiB and frees it: the host now holds those pages (4.8 GiB
    of guests' pages on a 4 GiB host) while the guests see them as free."""
    for vm in fleet.vms:
        got = vm.guest.alloc(1300 * MiB)
        vm.guest.release_anon(got)
    await poll_until(lambda: available(fake_dir) < 0.15, what="host pressure")


async def test_pressure_inflates_with_reasons_and_its_end_deflates(
    fake_fleet: FakeFleet, controller: AutoController, fake_dir: Path, tmp_path: Path,
) -> None:
    quiet = await controller.cycle()
    assert not quiet.planned and not quiet.applied  # a host with room: nothing moves
    assert all(d.action is Action.HOLD for d in quiet.decisions)

    await squeeze(fake_fleet, fake_dir)
    first = await controller.cycle()
    assert {c.name for c in first.applied} == {"vm1", "vm2", "vm3"}
    for change in first.applied:
        assert change.action is Action.SHRINK and change.target < RAM
        assert change.reason.startswith("host available ") and " < 15 %: reclaim " in change.reason
    # journaled, with the same reasons, before the cycle returned
    entries = read_journal(tmp_path / "journal.jsonl").entries
    assert [(e.vm, e.target, e.reason, e.origin) for e in entries] == [
        (c.name, c.target, c.reason, Origin.AUTO) for c in first.applied]
    assert all(e.previous == RAM for e in entries)
    # the balloons really took the memory back from the host, until it has its 15 % (less
    # what is under the deadband: smaller moves are not worth making)
    await cycle_until(controller, lambda c: not c.planned)
    assert available(fake_dir) >= 0.15 - SETTINGS.deadband / (4 * GiB)
    assert all(vm.guest.actual < RAM for vm in fake_fleet.vms)

    # pressure falls: a guest shuts down, the others get their memory back
    await fake_fleet["vm3"].stop()
    seen = await cycle_until(controller, lambda c: all(
        vm.guest.actual == RAM for vm in fake_fleet.vms[:2]) and not c.planned, cycles=15)
    grown = [c for cycle in seen for c in cycle.applied]
    assert grown and all(c.action is Action.GROW and c.name != "vm3" for c in grown)
    assert all(" > 20 %: give back " in c.reason for c in grown)
    assert decision(seen[-1], "vm3") is Action.LEAVE  # unreachable now: left alone


async def test_a_swapping_guest_is_given_memory_while_the_host_is_short(
    fake_fleet: FakeFleet, controller: AutoController, fake_dir: Path,
) -> None:
    await squeeze(fake_fleet, fake_dir)
    first = await controller.cycle()  # every balloon inflates by a step
    vm1 = fake_fleet["vm1"].guest
    target = next(c.target for c in first.applied if c.name == "vm1")
    await poll_until(lambda: vm1.actual == target, what="vm1's balloon inflated")
    # vm1's work outgrows what the balloon left it: it swaps out, then keeps faulting
    # pages back in (40 MiB/s, far above the 1 MiB/s threshold)
    vm1.alloc(vm1.free + vm1.cache + 200 * MiB)
    vm1.release_anon(300 * MiB)
    assert vm1.swap_used > 0

    async def thrash() -> None:
        while True:
            vm1.swap_in_some(4 * MiB)
            await asyncio.sleep(0.1)

    task = asyncio.create_task(thrash())
    try:
        before = vm1.actual
        device = fake_fleet["vm1"].device
        assert device is not None
        reported = device.last_update
        # the guest reports its counters every second: wait until it has, twice
        await poll_until(lambda: device.last_update >= reported + 2, within=5,
                         what="two stats reports from vm1")
        cycle = await controller.cycle()
    finally:
        task.cancel()
    change = next(a for a in cycle.applied if a.name == "vm1")
    assert change.action is Action.GROW and change.target > before
    assert "vm1 swaps in " in change.reason and "never shrunk, given" in change.reason


async def test_a_foreign_writer_is_left_alone_journaled_once_until_taken_back(
    fake_fleet: FakeFleet, controller: AutoController, fake_dir: Path, tmp_path: Path,
) -> None:
    await cycle_until(controller, lambda c: True)
    await asyncio.sleep(1.1)
    await controller.cycle()  # the settled, unowned balloons are adopted
    # between two cycles, another QMP client (virsh, a script) sets vm2's balloon
    async with await RawQMP.open(fake_fleet["vm2"].qmp_path) as qmp:
        await qmp.execute("balloon", {"value": GiB})
    await poll_until(lambda: fake_fleet["vm2"].guest.actual == GiB, what="vm2 at 1 GiB")
    await squeeze(fake_fleet, fake_dir)  # the policy would now want every VM
    seen = await cycle_until(controller, lambda c: bool(c.foreign), cycles=4)
    for cycle in seen:
        vm2 = next(d for d in cycle.decisions if d.name == "vm2")
        assert vm2.action is Action.LEAVE and "another writer (foreign)" in vm2.reason
        assert "vm2" not in {c.name for c in cycle.applied}
    assert [(m.name, m.previous, m.actual) for m in seen[-1].foreign] == [("vm2", RAM, GiB)]
    for _ in range(2):  # never journaled twice, never touched
        await asyncio.sleep(1.1)
        cycle = await controller.cycle()
        assert not cycle.foreign and "vm2" not in {c.name for c in cycle.applied}
    assert fake_fleet["vm2"].guest.actual == GiB
    foreign = [e for e in read_journal(tmp_path / "journal.jsonl").entries
               if e.origin is Origin.FOREIGN]
    assert [(e.vm, e.previous, e.target) for e in foreign] == [("vm2", RAM, GiB)]
    assert "left the target 2 GiB it had reached" in foreign[0].reason
    state = next(s for s in cycle.states if s.name == "vm2")
    assert state.owner is Owner.FOREIGN and state.to_json()["owner"] == "foreign"

    assert await controller.reclaim(["vm2"]) == {"vm2": True}
    after = await controller.cycle()
    assert decision(after, "vm2") is not Action.LEAVE  # the policy manages it again


async def test_a_journal_that_cannot_be_written_stops_auto_before_anything_is_sent(
    fake_fleet: FakeFleet, controller: AutoController, fake_dir: Path, tmp_path: Path,
) -> None:
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    controller.journal = Journal(blocked)  # a directory where the file belongs
    await squeeze(fake_fleet, fake_dir)
    with pytest.raises(JournalError, match=r"cannot write: Is a directory \(EISDIR\)"):
        await controller.cycle()
    assert all(vm.guest.actual == RAM for vm in fake_fleet.vms)  # nothing was sent


async def test_a_journal_that_fails_after_the_targets_went_out_says_so(
    fake_fleet: FakeFleet, controller: AutoController, fake_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await squeeze(fake_fleet, fake_dir)
    journal = controller.journal
    assert journal is not None  # writable at first: the check before sending passes

    def full(*_: object) -> None:
        raise JournalError("cannot write: No space left on device (ENOSPC)",
                           path=str(journal.path))

    monkeypatch.setattr(journal, "append", full)
    with pytest.raises(JournalError) as caught:
        await controller.cycle()
    text = str(caught.value)
    assert "targets set (vm1 " in text and "but it is not in the journal" in text
    assert "ENOSPC" in text


async def test_dry_run_plans_and_sends_nothing(
    fake_fleet: FakeFleet, controller: AutoController, fake_dir: Path, tmp_path: Path,
) -> None:
    controller.dry_run = True
    await squeeze(fake_fleet, fake_dir)
    cycle = await controller.cycle()
    assert {d.name for d in cycle.planned} == {"vm1", "vm2", "vm3"} and not cycle.applied
    await asyncio.sleep(0.2)
    assert all(vm.guest.actual == RAM for vm in fake_fleet.vms)
    assert not (tmp_path / "journal.jsonl").exists()
    assert json.dumps([d.to_json() for d in cycle.decisions])  # plan --format json


async def test_a_cycle_saves_the_state_file_once_before_it_returns(
    fake_fleet: FakeFleet, controller: AutoController, fake_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "state.json"
    writes: list[Path] = []
    real = store_module.replace_atomically

    def counting(target: Path, raw: bytes) -> os.stat_result:  # the store's one way to write
        st = real(target, raw)
        writes.append(target)
        return st

    monkeypatch.setattr(store_module, "replace_atomically", counting)
    await controller.cycle()
    await squeeze(fake_fleet, fake_dir)
    writes.clear()
    before = path.stat().st_ino if path.exists() else None
    cycle = await controller.cycle()
    assert {c.name for c in cycle.applied} == {"vm1", "vm2", "vm3"}
    assert writes == [path] and path.stat().st_ino != before  # three targets, one write
    # saved before the cycle returned: another process sees every target sent
    saved = json.loads(path.read_text())
    assert sorted((e["target"], e["target_reached"]) for e in saved.values()) == sorted(
        (c.target, False) for c in cycle.applied)
    # and every later cycle (the targets reached and noted, more sent) writes at most once
    for _ in range(4):
        await asyncio.sleep(1.1)
        writes.clear()
        await controller.cycle()
        assert len(writes) <= 1
