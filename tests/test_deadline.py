"""``--timeout`` bounds the whole operation on a VM, not each QMP command separately."""

from __future__ import annotations

import time
from typing import Any

import pytest

from balloonctl.deadline import Deadline
from balloonctl.fake import FakeVM
from balloonctl.fleet import Fleet
from balloonctl.model import VmRef, VmStatus
from balloonctl.store import MemoryStore
from balloonctl.units import GiB, parse_target

COMMAND_TIMEOUT = 0.5
SLOW = 0.4  # each slow command answers just under COMMAND_TIMEOUT
SLOW_COMMANDS = ("query-cpus-fast", "query-memory-size-summary", "query-balloon")


def fleet_of(*vms: FakeVM, budget: float | None) -> Fleet:
    return Fleet([VmRef(name=vm.name, qmp=str(vm.qmp_path)) for vm in vms],
                 store=MemoryStore(), connect_timeout=1.0, command_timeout=COMMAND_TIMEOUT,
                 budget=budget)


async def slow_vm(factory: Any, name: str = "vm1") -> FakeVM:
    vm: FakeVM = await factory(name)
    for cmd in SLOW_COMMANDS:
        vm.faults.delay[cmd] = SLOW
    return vm


def test_deadline_bounds_a_timeout_by_what_is_left() -> None:
    now = [100.0]
    d = Deadline(2.0, clock=lambda: now[0])
    assert d.bound(5.0) == (2.0, True) and d.bound(1.0) == (1.0, False)
    now[0] = 101.5
    assert d.bound(1.0) == (0.5, True)
    now[0] = 103.0
    assert d.remaining() == 0.0 and d.bound(1.0) == (0.0, True)


async def test_a_vm_answering_each_command_just_in_time_is_cut_off(
    fake_vm_factory: Any,
) -> None:
    budget = 1.0  # three commands at 0.4 s: 1.2 s, each under its 0.5 s timeout
    vm = await slow_vm(fake_vm_factory)
    healthy = await fake_vm_factory("vm2")
    async with fleet_of(vm, healthy, budget=budget) as fleet:
        started = time.monotonic()
        slow, fine = await fleet.snapshot()
        took = time.monotonic() - started
    assert budget - 0.05 <= took < budget + 0.3, took
    assert slow.status is VmStatus.UNREACHABLE and slow.error_kind == "QMPTimeout"
    assert "did not answer query-balloon within the overall limit of 1s for this VM" in (
        slow.error or "")
    assert fine.status is VmStatus.OK


async def test_just_inside_the_budget_the_same_vm_is_read(fake_vm_factory: Any) -> None:
    vm = await slow_vm(fake_vm_factory)
    async with fleet_of(vm, budget=1.6) as fleet:  # 1.2 s of slow answers, plus the rest
        (state,) = await fleet.snapshot()
    assert state.status is VmStatus.OK and state.actual == 2 * GiB


async def test_without_a_budget_only_each_command_is_bounded(fake_vm_factory: Any) -> None:
    vm = await slow_vm(fake_vm_factory)
    async with fleet_of(vm, budget=None) as fleet:
        (state,) = await fleet.snapshot()
    assert state.status is VmStatus.OK


async def test_set_wait_waits_on_top_of_the_budget(fake_vm_factory: Any) -> None:
    vm: FakeVM = await fake_vm_factory("vm1", rate=1 * GiB)  # 1 GiB takes about 1 s
    async with fleet_of(vm, budget=0.5) as fleet:
        async def set_and_wait(c: Any) -> int:
            target = await c.set_target(parse_target("1G"))
            return int(await c.wait_for_target(target, timeout=10.0))

        result = (await fleet.run_each(None, set_and_wait))["vm1"]
    assert result == pytest.approx(GiB, abs=2 * 1024**2)
