"""Targets, stats and convergence: what ``balloonctl set``/``status`` do, against the fake."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rawqmp import RawQMP, poll_until

from balloonctl.errors import (
    DriverNotReady,
    SizeError,
    StuckBalloon,
    UnsafeTarget,
    WaitTimeout,
)
from balloonctl.fake import FakeVM
from balloonctl.model import CONVERGED_TOLERANCE, HARD_MINIMUM, Owner, VmStatus
from balloonctl.qmp import BalloonClient
from balloonctl.store import FileStore, MemoryStore
from balloonctl.units import GiB, MiB, parse_target

ClientFactory = Callable[..., BalloonClient]


def fake_target(vm: FakeVM) -> int:
    """The target the fake guest was last given (guest RAM when none was sent)."""
    return vm.guest.ram - vm.guest.balloon_target


async def test_absolute_target_is_sent_recorded_and_reached(
    fake_vm: FakeVM, client_for: ClientFactory,
) -> None:
    store = MemoryStore()
    async with client_for(fake_vm, store=store) as client:
        before = time.time()
        assert await client.set_target(parse_target("1G")) == GiB
        assert fake_target(fake_vm) == GiB
        entry = store.get(str(fake_vm.qmp_path))
        assert entry["target"] == GiB and entry["target_at"] >= before
        seen: list[tuple[int, int]] = []
        actual = await client.wait_for_target(GiB, timeout=5, progress=lambda a, t: seen.append(
            (a, t)))
    assert abs(actual - GiB) <= CONVERGED_TOLERANCE
    assert seen and all(t == GiB for _, t in seen)
    assert seen[-1][0] == actual
    assert [a for a, _ in seen] == sorted((a for a, _ in seen), reverse=True)


async def test_percent_and_relative_targets(fake_vm: FakeVM, client_for: ClientFactory) -> None:
    async with client_for(fake_vm) as client:
        assert await client.set_target(parse_target("75%")) == 1536 * MiB
        # Relative targets count from the last target set, not from where actual is now.
        assert await client.set_target(parse_target("-512M")) == GiB
        assert await client.set_target(parse_target("+256M")) == 1280 * MiB
        assert fake_target(fake_vm) == 1280 * MiB
        assert await client.resolve_target(parse_target("+768M")) == 2 * GiB
        with pytest.raises(SizeError):
            await client.resolve_target(parse_target("-4G"))


async def test_a_remembered_target_larger_than_the_vm_is_ignored(
    fake_vm: FakeVM, client_for: ClientFactory,
) -> None:
    store = MemoryStore()
    async with client_for(fake_vm, store=store) as client:
        # A bigger VM once had this socket (and, improbably, the same instance identity).
        store.update(str(fake_vm.qmp_path), instance=await client.instance_id(),
                     target=8 * GiB, target_at=time.time())
        assert await client.resolve_target(parse_target("-512M")) == 1536 * MiB


async def test_relative_target_without_history_counts_from_actual(
    fake_vm: FakeVM, client_for: ClientFactory,
) -> None:
    async with client_for(fake_vm) as client:
        assert await client.resolve_target(parse_target("-512M")) == 1536 * MiB


async def test_target_above_guest_ram_is_never_sent(
    fake_vm: FakeVM, client_for: ClientFactory,
) -> None:
    async with client_for(fake_vm) as client:
        with pytest.raises(UnsafeTarget, match="above guest RAM"):
            await client.set_target(parse_target("3G"))
        with pytest.raises(UnsafeTarget, match="above guest RAM"):
            await client.set_target(parse_target("+1M"))
    assert fake_vm.guest.balloon_target == 0


async def test_target_above_maximum_is_never_sent(
    fake_vm: FakeVM, client_for: ClientFactory,
) -> None:
    async with client_for(fake_vm, maximum=GiB) as client:
        with pytest.raises(UnsafeTarget, match="maximum"):
            await client.set_target(parse_target("1.5G"))
    assert fake_vm.guest.balloon_target == 0


async def test_target_below_floor_needs_force(fake_vm: FakeVM, client_for: ClientFactory) -> None:
    async with client_for(fake_vm) as client:
        with pytest.raises(UnsafeTarget, match="safe floor 256 MiB") as err:
            await client.set_target(parse_target("200M"))
        assert err.value.target == 200 * MiB
        assert fake_vm.guest.balloon_target == 0
        assert await client.set_target(parse_target("200M"), force=True) == 200 * MiB
        assert fake_target(fake_vm) == 200 * MiB


async def test_forced_target_below_hard_minimum_is_never_sent(
    fake_vm: FakeVM, client_for: ClientFactory,
) -> None:
    async with client_for(fake_vm) as client:
        with pytest.raises(UnsafeTarget, match="hard minimum"):
            await client.set_target(HARD_MINIMUM - MiB, force=True)
    assert fake_vm.guest.balloon_target == 0


async def test_configured_minimum_is_the_floor(fake_vm: FakeVM, client_for: ClientFactory) -> None:
    async with client_for(fake_vm, minimum=GiB) as client:
        with pytest.raises(UnsafeTarget, match="safe floor 1 GiB"):
            await client.set_target(parse_target("900M"))
        assert (await client.snapshot()).floor == GiB


async def test_dry_run_resolves_and_validates_but_sends_nothing(
    fake_vm: FakeVM, client_for: ClientFactory,
) -> None:
    store = MemoryStore()
    async with client_for(fake_vm, store=store) as client:
        assert await client.set_target(parse_target("50%"), dry_run=True) == GiB
        with pytest.raises(UnsafeTarget):
            await client.set_target(parse_target("10M"), dry_run=True)
    assert fake_vm.guest.balloon_target == 0
    assert store.get(str(fake_vm.qmp_path)) == {}


async def test_target_persists_in_a_file_store(
    fake_vm: FakeVM, tmp_path: Path, client_for: ClientFactory,
) -> None:
    async with client_for(fake_vm, store=FileStore(tmp_path / "state.json")) as client:
        await client.set_target(parse_target("1G"))
    async with client_for(fake_vm, store=FileStore(tmp_path / "state.json")) as again:
        assert await again.current_target() == GiB
        assert again.last_target() == GiB
        assert await again.set_target(parse_target("-256M")) == 768 * MiB
        state = await again.snapshot()
    assert state.target == 768 * MiB


async def test_stuck_balloon(fake_vm: FakeVM, client_for: ClientFactory) -> None:
    fake_vm.faults.stuck = True
    async with client_for(fake_vm) as client:
        await client.set_target(GiB)
        started = time.monotonic()
        with pytest.raises(StuckBalloon) as err:
            await client.wait_for_target(GiB, timeout=60, stall_timeout=0.3)
        assert time.monotonic() - started < 30  # the stall ended it, not the 60 s wait
        assert err.value.actual == 2 * GiB and err.value.target == GiB
        assert "no movement for 0.3s" in str(err.value)


async def test_wait_timeout_while_still_moving(
    fake_vm_factory: Any, client_for: ClientFactory,
) -> None:
    vm = await fake_vm_factory(rate=64 * MiB)
    async with client_for(vm) as client:
        await client.set_target(GiB)
        with pytest.raises(WaitTimeout) as err:
            await client.wait_for_target(GiB, timeout=0.3, stall_timeout=5)
        assert not isinstance(err.value, StuckBalloon)
        assert err.value.actual is not None and GiB < err.value.actual < 2 * GiB


async def test_no_driver(fake_vm_factory: Any, client_for: ClientFactory) -> None:
    vm = await fake_vm_factory(driver=False)
    async with client_for(vm) as client:
        stats = await client.stats()
        assert not stats.reported and stats.free_memory is None
        state = await client.snapshot()
        assert state.status is VmStatus.NO_DRIVER and not state.driver_ready
        await client.set_target(GiB)
        with pytest.raises(DriverNotReady, match="virtio_balloon"):
            await client.wait_for_target(GiB, timeout=5, stall_timeout=0.3)


async def test_driver_that_loads_late_converges(
    fake_vm_factory: Any, client_for: ClientFactory,
) -> None:
    vm = await fake_vm_factory(driver=False)
    async with client_for(vm) as client:
        await client.set_target(GiB)
        vm.load_driver()
        assert abs(await client.wait_for_target(GiB, timeout=5) - GiB) <= CONVERGED_TOLERANCE


async def test_stats_and_polling_interval(fake_vm: FakeVM, client_for: ClientFactory) -> None:
    async with client_for(fake_vm) as client:
        stats = await client.stats()
        assert stats.reported
        assert stats.free_memory == fake_vm.guest.free
        assert stats.disk_caches == fake_vm.guest.cache
        assert await client.polling_interval() == 0
        await client.enable_stats(1)
        assert await client.polling_interval() == 1
        state = await client.snapshot()
        assert state.polling_interval == 1 and state.status is VmStatus.OK


async def test_stale_stats(fake_vm: FakeVM, client_for: ClientFactory) -> None:
    async with client_for(fake_vm) as client:
        await client.enable_stats(1)
        fake_vm.faults.stale_stats = True
        # The guest stopped answering a minute ago (the device keeps its last sample).
        assert fake_vm.device is not None
        fake_vm.device.last_update = int(time.time()) - 60
        state = await client.snapshot()
    assert state.stale and state.status is VmStatus.STALE
    assert state.stats_age is not None and state.stats_age >= 59


async def test_features(fake_vm_factory: Any, client_for: ClientFactory) -> None:
    vm = await fake_vm_factory(deflate_on_oom=True, free_page_reporting=True)
    async with client_for(vm) as client:
        features = await client.features()
    assert features.deflate_on_oom is True
    assert features.free_page_reporting is True
    assert features.free_page_hint is False


async def test_snapshot_while_converging(fake_vm_factory: Any, client_for: ClientFactory) -> None:
    vm = await fake_vm_factory(rate=64 * MiB)
    async with client_for(vm) as client:
        await client.set_target(GiB)
        state = await poll_until(client.snapshot, within=2)
        assert state.target == GiB and state.status is VmStatus.CONVERGING
        assert state.to_json()["target"] == GiB


# --- the remembered target belongs to one run of the VM --------------------------------


async def test_a_restarted_vm_has_no_remembered_target(
    fake_vm_factory: Any, tmp_path: Path, client_for: ClientFactory,
) -> None:
    state_file = tmp_path / "state.json"
    first: FakeVM = await fake_vm_factory()
    async with client_for(first, store=FileStore(state_file)) as client:
        await client.set_target(parse_target("1.5G"))
    await first.stop()  # QEMU exits; a new QEMU (a fresh guest) starts on the same path
    fake_vm: FakeVM = await fake_vm_factory()
    assert fake_vm.qmp_path == first.qmp_path
    async with client_for(fake_vm, store=FileStore(state_file)) as client:
        state = await client.snapshot()
        assert state.actual == 2 * GiB and state.target is None
        assert state.status is VmStatus.OK and state.to_json()["target"] is None
        assert await client.current_target() is None
        # Relative targets count from actual (2G), not from the old run's 1.5G.
        assert await client.set_target(parse_target("-256M"), dry_run=True) == 1792 * MiB


async def test_an_entry_without_an_instance_is_ignored(
    fake_vm: FakeVM, tmp_path: Path, client_for: ClientFactory,
) -> None:
    store = FileStore(tmp_path / "state.json")
    # What balloonctl wrote before entries carried the VM instance.
    store.update(str(fake_vm.qmp_path), target=GiB, target_at=time.time(), hint=True)
    async with client_for(fake_vm, store=store) as client:
        assert (await client.snapshot()).target is None
        assert await client.resolve_target(parse_target("-256M")) == 1792 * MiB
        assert await client.set_target(parse_target("1G")) == GiB
    entry = store.get(str(fake_vm.qmp_path))
    assert entry["target"] == GiB and "hint" not in entry  # the old entry was replaced


async def test_a_reached_target_changed_by_another_client_is_forgotten(
    fake_vm: FakeVM, tmp_path: Path, client_for: ClientFactory,
) -> None:
    store = FileStore(tmp_path / "state.json")
    async with client_for(fake_vm, store=store) as client:
        await client.set_target(parse_target("1.5G"))
        await client.wait_for_target(1536 * MiB, timeout=5)
    # virsh / qmp-shell moves the balloon while balloonctl is not looking.
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        await qmp.execute("balloon", {"value": GiB})
    await poll_until(lambda: fake_vm.guest.actual == GiB, what="the balloon to reach 1G")
    async with client_for(fake_vm, store=store) as client:
        state = await client.snapshot()
        assert state.target is None and state.status is VmStatus.OK
        assert await client.resolve_target(parse_target("-256M")) == 768 * MiB
    assert "target" not in store.get(str(fake_vm.qmp_path))


async def test_a_target_never_reached_goes_stale_after_the_threshold(
    fake_vm: FakeVM, tmp_path: Path, client_for: ClientFactory,
) -> None:
    store = FileStore(tmp_path / "state.json")
    async with client_for(fake_vm, store=store) as client:
        await client.set_target(parse_target("1G"))
    # Another client changes the target, on the way from 2G to 1G, before balloonctl saw
    # its own one reached: the balloon stops where a stuck one could have stopped.
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        await qmp.execute("balloon", {"value": 1536 * MiB})
    await poll_until(lambda: fake_vm.guest.actual == 1536 * MiB, what="the balloon at 1.5G")
    # Within the threshold the remembered target still stands (it may be converging).
    async with client_for(fake_vm, store=store, target_stale_after=120) as client:
        state = await client.snapshot()
        assert state.target == GiB and state.status is VmStatus.CONVERGING
        assert state.owner is Owner.BALLOONCTL
    # Past it (here: a threshold of zero), it is unknown and relative sizes count from
    # actual; nobody is known to own the balloon (not foreign: a stuck one looks the same).
    async with client_for(fake_vm, store=store, target_stale_after=0) as client:
        state = await client.snapshot()
        assert state.target is None and state.status is VmStatus.OK and state.owner is None
        assert await client.resolve_target(parse_target("-256M")) == 1280 * MiB


async def test_the_instance_identity_changes_with_every_run(
    fake_vm: FakeVM, client_for: ClientFactory,
) -> None:
    client = client_for(fake_vm)
    first = await client.instance_id()
    assert first is not None and await client.instance_id() == first
    await client.close()
    assert await client.instance_id() == first  # a new connection to the same run
    await client.close()
    await fake_vm.stop()
    await fake_vm.start()
    again = await client.instance_id()
    assert again is not None and again != first
    # The thread-id part alone (all a TCP address has) tells the runs apart too.
    assert first.rsplit(" ", 1)[1] != again.rsplit(" ", 1)[1]
