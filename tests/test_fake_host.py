"""The fake fleet's simulated host: its accounting (HostSim), and its files read by read_host.

The oracles come from the model in balloonctl/fake/hostsim.py's docstring: a guest's resident
memory is its RAM minus the balloon minus the free memory it never touched; KSM saves, per
image, the sum of the guests' identical memory minus the largest, growing only while it runs;
PSI rises as available memory falls below 10 % of the RAM.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from rawqmp import RawQMP, poll_until

from balloonctl.config import Inventory
from balloonctl.fake import FakeFleet, FakeVM, HostSim
from balloonctl.fake.hostsim import guest_memory
from balloonctl.host import (
    KSM_DIR,
    MEMINFO,
    PAGE_SIZE,
    PSI_MEMORY,
    HostMemory,
    host_files,
    host_root_for,
    parse_meminfo,
    read_host,
)
from balloonctl.units import GiB, MiB


def _pages(n: float) -> int:
    return int(n) // PAGE_SIZE * PAGE_SIZE


@pytest.fixture
def make_vm(tmp_path: Path) -> Any:
    """``make_vm(name, **FakeVM kwargs)``: a FakeVM that is never started (its guest is
    driven directly; the host only looks at its memory)."""
    def make(name: str = "vm1", **kw: Any) -> FakeVM:
        return FakeVM(name, tmp_path, **{"ram": 2 * GiB, **kw})
    return make


def update(sim: HostSim, vms: list[FakeVM], dt: float = 0.1) -> None:
    sim.update([guest_memory(vm) for vm in vms], dt)


def inflate_to(vm: FakeVM, actual: int) -> None:
    vm.guest.set_target(actual)
    while vm.guest.step_balloon(64 * MiB):
        pass
    assert vm.guest.actual == actual


def test_a_guest_touching_memory_raises_the_hosts_used_memory(make_vm: Any) -> None:
    sim = HostSim(16 * GiB, ksm_run=False)
    vm = make_vm()
    update(sim, [vm])
    used, anon = sim.reading().used, sim.anon
    assert vm.guest.alloc(512 * MiB) == 512 * MiB
    update(sim, [vm])
    assert sim.anon - anon == 512 * MiB
    assert sim.reading().used - used == 512 * MiB
    # freeing it inside the guest does not give it back: the host never hears of it
    vm.guest.release_anon(512 * MiB)
    update(sim, [vm])
    assert sim.reading().used - used == 512 * MiB


@pytest.mark.parametrize("hint", [False, True])
def test_inflating_a_balloon_by_n_lowers_the_hosts_used_memory_by_n(
    make_vm: Any, hint: bool
) -> None:
    sim = HostSim(16 * GiB, ksm_run=False)
    vm = make_vm(hint_device=True)
    vm.guest.hint = hint  # cache-first takes page cache, otherwise touched free memory
    update(sim, [vm])
    vm.guest.alloc(GiB)
    vm.guest.release_anon(GiB)  # 1 GiB of touched free memory
    update(sim, [vm])
    used = sim.reading().used
    inflate_to(vm, 2 * GiB - 512 * MiB)
    update(sim, [vm])
    assert used - sim.reading().used == 512 * MiB
    # one more step: 1 MiB more balloon, 1 MiB less on the host
    inflate_to(vm, 2 * GiB - 513 * MiB)
    update(sim, [vm])
    assert used - sim.reading().used == 513 * MiB


def test_a_balloon_over_never_touched_memory_returns_nothing(make_vm: Any) -> None:
    sim = HostSim(16 * GiB, ksm_run=False)
    vm = make_vm()
    update(sim, [vm])
    anon = sim.anon
    inflate_to(vm, 2 * GiB - 512 * MiB)  # the fresh guest's free memory was never touched
    update(sim, [vm])
    assert sim.anon == anon
    # deflating hands back pages the guest never touched: still nothing on the host
    inflate_to(vm, 2 * GiB)
    update(sim, [vm])
    assert sim.anon == anon


def test_free_page_reporting_gives_freed_guest_memory_back(make_vm: Any) -> None:
    sim = HostSim(16 * GiB, ksm_run=False)
    vm = make_vm(free_page_reporting=True)
    update(sim, [vm])
    anon = sim.anon
    vm.guest.alloc(GiB)
    update(sim, [vm])
    assert sim.anon - anon == GiB
    vm.guest.release_anon(GiB)
    update(sim, [vm])
    assert sim.anon == anon


def test_a_stopped_guest_frees_its_memory_on_the_host(make_vm: Any) -> None:
    sim = HostSim(16 * GiB, ksm_run=False)
    a, b = make_vm("a"), make_vm("b")
    update(sim, [a])
    alone = sim.anon
    update(sim, [a, b])
    assert sim.anon > alone and sim.guest_ram == 4 * GiB
    update(sim, [a])
    assert sim.anon == alone and sim.guest_ram == 2 * GiB


# --- KSM ------------------------------------------------------------------------------------


def _identical(vm: FakeVM) -> int:
    """The documented share of one guest KSM can merge: 25 % of kernel + anonymous memory."""
    return _pages(0.25 * (vm.guest.kernel_reserve + vm.guest.anon))


def test_ksm_saves_nothing_while_stopped(make_vm: Any) -> None:
    sim = HostSim(16 * GiB, ksm_run=False)
    vms = [make_vm(f"vm{i}") for i in range(3)]
    for _ in range(3):
        update(sim, vms, dt=100.0)
    ksm = sim.reading().ksm
    assert ksm is not None and not ksm.run
    assert ksm.saved == 0 and ksm.pages_shared == 0


def test_ksm_merges_identical_guests_while_it_runs(make_vm: Any) -> None:
    sim = HostSim(16 * GiB, ksm_run=True, ksm_rate=256 * MiB)
    vms = [make_vm(f"vm{i}") for i in range(3)]
    update(sim, vms, dt=0.0)
    unmerged = sim.anon
    update(sim, vms, dt=0.1)  # ksmd scans gradually: 0.1 s at 256 MiB/s
    assert sim.reading().ksm.saved == _pages(25.6 * MiB)  # type: ignore[union-attr]
    update(sim, vms, dt=100.0)
    expected = 3 * _identical(vms[0]) - _identical(vms[0])  # three copies become one
    ksm = sim.reading().ksm
    assert ksm is not None and ksm.run
    assert ksm.saved == expected > 0
    assert ksm.pages_shared * PAGE_SIZE == _identical(vms[0])
    assert unmerged - sim.anon == expected  # what KSM saved, the host does not hold


def test_ksm_does_not_merge_guests_of_different_images(make_vm: Any) -> None:
    sim = HostSim(16 * GiB, ksm_run=True)
    vms = [make_vm("a", image="debian-12"), make_vm("b", image="alpine-3.19")]
    update(sim, vms, dt=100.0)
    assert sim.reading().ksm.saved == 0  # type: ignore[union-attr]
    vms.append(make_vm("c", image="alpine-3.19"))
    update(sim, vms, dt=100.0)
    assert sim.reading().ksm.saved == _identical(vms[1])  # type: ignore[union-attr]


def test_stopped_ksm_keeps_what_it_merged_and_loses_what_the_guests_free(make_vm: Any) -> None:
    sim = HostSim(16 * GiB, ksm_run=True)
    vms = [make_vm(f"vm{i}") for i in range(2)]
    update(sim, vms, dt=100.0)
    merged = sim.ksm_saved
    assert merged == _identical(vms[0])
    sim.ksm_run = False
    for vm in vms:
        vm.guest.alloc(256 * MiB)  # more identical memory, but ksmd no longer scans
    update(sim, vms, dt=100.0)
    assert sim.ksm_saved == merged
    for vm in vms:
        vm.guest.release_anon(vm.guest.anon)  # the merged pages are freed
    update(sim, vms, dt=1.0)
    assert sim.ksm_saved == _identical(vms[0]) < merged


# --- PSI, swap, invariants ------------------------------------------------------------------


def test_psi_rises_when_available_memory_falls_below_a_tenth_of_the_ram(make_vm: Any) -> None:
    sim = HostSim(4 * GiB, ksm_run=False)
    vms = [make_vm(f"vm{i}") for i in range(2)]
    update(sim, vms, dt=10.0)
    assert sim.available > 0.1 * sim.ram
    assert sim.reading().psi.some_avg10 == 0.0  # type: ignore[union-attr]
    for vm in vms:
        vm.guest.alloc(1400 * MiB)
    update(sim, vms, dt=0.0)
    short = 1 - sim.available / (0.1 * sim.ram)
    assert 0 < short < 1
    update(sim, vms, dt=10.0)  # one time constant of avg10 at constant pressure
    psi = sim.reading().psi
    assert psi is not None
    decay = 1 - math.exp(-1)
    assert psi.some_avg10 == pytest.approx(100 * short * decay, abs=0.01)
    assert psi.full_avg10 == pytest.approx(100 * short**2 * decay, abs=0.01)
    assert psi.some_avg10 > psi.some_avg60 > psi.some_avg300 > 0  # longer windows lag
    assert psi.some_total == pytest.approx(short * 10.0 * 1e6, rel=1e-6)


def test_psi_starts_just_below_the_threshold() -> None:
    ram, kernel = GiB, 64 * MiB
    probe = HostSim(ram, kernel=kernel, own_anon=0, cache_target=0)
    room = ram - kernel - probe.low_watermark  # available with nothing else running
    at = HostSim(ram, kernel=kernel, own_anon=room - math.ceil(0.1 * ram), cache_target=0)
    at.update((), 60.0)
    assert at.available == math.ceil(0.1 * ram)
    assert at.reading().psi.some_avg10 == 0.0  # type: ignore[union-attr]
    below = HostSim(ram, kernel=kernel, own_anon=room - math.ceil(0.1 * ram) + 2 * MiB,
                    cache_target=0)
    below.update((), 60.0)
    assert below.reading().psi.some_avg10 > 0.0  # type: ignore[union-attr]


def test_what_does_not_fit_goes_to_host_swap(make_vm: Any) -> None:
    sim = HostSim(2 * GiB, swap_total=GiB, ksm_run=False)
    vms = [make_vm(f"vm{i}", ram=GiB) for i in range(3)]
    for vm in vms:
        vm.guest.alloc(700 * MiB)
    update(sim, vms)
    host = sim.reading()
    assert 0 < host.swap_free < host.swap_total
    assert host.available == 0 and host.cached == 0
    assert host.anon + host.free + sim.kernel == host.total


def test_the_host_always_adds_up_and_reads_back_under_a_workload(make_vm: Any) -> None:
    sim = HostSim(3 * GiB, swap_total=512 * MiB)
    vms = [make_vm(f"vm{i}", workload="compile", seed=i) for i in range(3)]
    for step in range(400):
        for vm in vms:
            vm.guest.workload_step()
        if step == 200:
            inflate_to(vms[0], GiB)
        update(sim, vms, dt=0.1)
        host = sim.reading()
        assert host.free + host.cached + host.anon + sim.kernel == host.total
        assert min(host.free, host.cached, host.anon, host.swap_free, host.available) >= 0
        assert host.available <= host.total
        # every reading is a valid meminfo (the parser would refuse anything else)
        parsed = parse_meminfo(host_files(host)[MEMINFO])
        assert parsed.total == host.total and parsed.anon == host.anon // 1024 * 1024


def test_the_simulated_host_refuses_what_it_cannot_be() -> None:
    with pytest.raises(ValueError, match="at least 256 MiB"):
        HostSim(255 * MiB)
    HostSim(256 * MiB)  # the edge
    with pytest.raises(ValueError, match="ksm_fraction"):
        HostSim(GiB, ksm_fraction=1.5)


# --- the fleet writes it, balloonctl reads it -----------------------------------------------


async def test_the_fleets_host_files_appear_and_read_like_a_real_host(fake_dir: Path) -> None:
    fleet = FakeFleet(3, fake_dir, ram=GiB, tick=0.01, rate=4 * GiB, host_mem=4 * GiB,
                      host={"ksm_run": False})
    root = fake_dir / "host"
    async with fleet:
        assert fleet.host is not None
        for rel in (MEMINFO, PSI_MEMORY, f"{KSM_DIR}/run", f"{KSM_DIR}/pages_shared",
                    f"{KSM_DIR}/pages_sharing"):
            assert (root / rel).is_file(), rel
        assert host_root_for(fake_dir) == root
        env = {"BALLOONCTL_WELLKNOWN": "", "BALLOONCTL_CONFIG": str(fake_dir / "absent.toml")}
        inventory = Inventory.load(directory=str(fake_dir), env=env)
        assert inventory.host_root == root and inventory.names == ["vm1", "vm2", "vm3"]
        host = read_host(inventory.host_root)
        assert host.total == 4 * GiB and host.source == str(root)
        assert host.ksm is not None and host.ksm.saved == 0 and host.psi is not None

        vm = fleet["vm1"]
        vm.guest.alloc(512 * MiB)
        vm.guest.release_anon(512 * MiB)  # touched, now free in the guest
        ticks = fleet.host.ticks
        await poll_until(lambda: fleet.host.ticks > ticks + 1)  # type: ignore[union-attr]
        used = read_host(root).used
        async with await RawQMP.open(vm.qmp_path) as qmp:
            await qmp.execute("balloon", {"value": GiB - 256 * MiB})
        await poll_until(lambda: used - read_host(root).used == 256 * MiB,
                         what="the host to get 256 MiB back")
        ticks = fleet.host.ticks
        await poll_until(lambda: fleet.host.ticks > ticks + 5)  # type: ignore[union-attr]
        assert read_host(root).ksm.saved == 0  # type: ignore[union-attr]
    # the fleet is gone, and so is its host: balloonctl falls back to this machine
    assert not root.exists()
    assert host_root_for(fake_dir) == Path("/")


async def test_a_fleet_of_identical_guests_shows_ksm_savings(fake_dir: Path) -> None:
    async with FakeFleet(3, fake_dir, ram=GiB, tick=0.01, host_mem=4 * GiB) as fleet:
        def merged() -> HostMemory | None:
            host = read_host(fake_dir / "host")
            return host if host.ksm is not None and host.ksm.saved > 0 else None

        host = await poll_until(merged, what="KSM to merge")
        assert host.ksm is not None and host.ksm.run
        assert fleet.host is not None and host.ksm.saved <= fleet.host.sim.ksm_saved


async def test_a_fleet_without_host_mem_writes_no_host(fake_dir: Path) -> None:
    async with FakeFleet(1, fake_dir, ram=GiB, tick=0.01) as fleet:
        assert fleet.host is None
        assert not (fake_dir / "host").exists()
        assert host_root_for(fake_dir) == Path("/")
