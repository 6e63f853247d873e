"""balloonctl's BalloonClient against a real QEMU with a real Linux guest.

Every test runs on the session's shared guest and leaves it as it found it (the conftest
puts the balloon back at full RAM and stats polling off after each test).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pytest

from balloonctl.errors import (
    DriverNotReady,
    HintUnsupported,
    NoBalloonDevice,
    QMPCommandError,
    SocketBusy,
    UnsafeTarget,
)
from balloonctl.model import GuestStats, HintMethod, HintMode, VmStatus
from balloonctl.qmp import BalloonClient

from .qemu import MiB, QemuVM

pytestmark = pytest.mark.realvm

TARGET = 640 * MiB
BIG_FILE = "/data/big.bin"  # 200 MiB on the read-only data disk


def client_for(vm: QemuVM, *, agent: bool = False, **kwargs: object) -> BalloonClient:
    return BalloonClient(
        str(vm.qmp_path), name=vm.name, qga=str(vm.qga_path) if agent else None,
        **kwargs,  # type: ignore[arg-type]
    )


async def fresh_stats(
    client: BalloonClient, *, newer_than: int,
    until: Callable[[GuestStats], bool] = lambda s: True, within: float = 20.0,
) -> GuestStats:
    """Poll guest-stats (polling must be on) for a sample newer than ``newer_than`` that
    satisfies ``until``; fail with the last sample after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        stats = await client.stats()
        if stats.last_update > newer_than and until(stats):
            return stats
        if loop.time() >= deadline:
            pytest.fail(f"no matching guest stats sample within {within:g}s; last: {stats}")
        await asyncio.sleep(0.2)


async def test_target_converges_and_guest_stats_follow(real_vm: QemuVM) -> None:
    async with client_for(real_vm) as client:
        ram = await client.guest_ram()
        assert ram == real_vm.ram
        assert await client.query_actual() == ram
        await client.enable_stats(1)
        before = await fresh_stats(client, newer_than=0)
        assert before.total_memory is not None and before.free_memory is not None
        total_before = before.total_memory

        seen: list[int] = []
        assert await client.set_target(TARGET) == TARGET
        actual = await client.wait_for_target(
            TARGET, timeout=60, stall_timeout=15, progress=lambda a, _t: seen.append(a)
        )
        assert abs(actual - TARGET) <= 2 * MiB
        assert seen == sorted(seen, reverse=True), "actual moved up while inflating"

        # The driver takes the balloon's pages out of MemTotal (no deflate-on-oom here).
        ballooned = ram - TARGET
        after = await fresh_stats(
            client, newer_than=before.last_update,
            until=lambda s: (s.total_memory or 0) <= total_before - ballooned + 4 * MiB,
        )
        assert after.free_memory is not None
        # Free memory falls by about the balloon size (the guest may reclaim a little).
        assert after.free_memory < before.free_memory - ballooned * 3 // 4

        state = await client.snapshot()
        assert state.reachable and state.driver_ready
        assert state.target == TARGET
        assert state.ballooned is not None and abs(state.ballooned - ballooned) <= 2 * MiB
        assert state.status is VmStatus.OK

        await client.set_target(ram)
        assert await client.wait_for_target(ram, timeout=30) == ram
        # Deflated: a later sample shows MemTotal back where it was.
        await fresh_stats(
            client, newer_than=after.last_update,
            until=lambda s: (s.total_memory or 0) > total_before - 8 * MiB,
        )


async def test_balloon_change_events_arrive_while_inflating(real_vm: QemuVM) -> None:
    async with client_for(real_vm) as client:
        seen: list[int] = []
        final = asyncio.Event()

        async def collect() -> None:
            async for event in client.events():
                if event.name == "BALLOON_CHANGE":
                    seen.append(int(event.data["actual"]))
                    if abs(seen[-1] - TARGET) <= 2 * MiB:
                        final.set()

        collector = asyncio.create_task(collect())
        try:
            await client.set_target(TARGET)
            await client.wait_for_target(TARGET, timeout=60, stall_timeout=15)
            # QEMU sends at most one event per second, so the last one trails convergence.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(final.wait(), 5)
        finally:
            collector.cancel()
    assert seen, "no BALLOON_CHANGE event during a 384 MiB inflation"
    assert abs(seen[-1] - TARGET) <= 2 * MiB  # the last event carries the final value
    assert all(TARGET - 2 * MiB <= a <= real_vm.ram for a in seen)


async def test_stats_polling_makes_last_update_advance(real_vm: QemuVM) -> None:
    async with client_for(real_vm) as client:
        assert await client.polling_interval() == 0
        first = await client.stats()
        assert first.reported  # the driver pushed one sample when it loaded
        await client.enable_stats(1)
        assert await client.polling_interval() == 1
        later = await fresh_stats(client, newer_than=first.last_update, within=10)
        again = await fresh_stats(client, newer_than=later.last_update, within=10)
        assert again.last_update > later.last_update > first.last_update
        await client.enable_stats(0)
        assert await client.polling_interval() == 0


async def test_negative_polling_interval_is_refused_by_qemu(real_vm: QemuVM) -> None:
    async with client_for(real_vm) as client:
        with pytest.raises(QMPCommandError) as err:
            await client.enable_stats(-1)
        assert "greater than zero" in str(err.value)
        assert await client.polling_interval() == 0


def guest_memory(vm: QemuVM) -> tuple[int, int]:
    """(page cache, free) in the guest now, in bytes: /proc/meminfo's Cached + Buffers and
    MemFree, read through the guest agent."""
    fields: dict[str, int] = {}
    for line in vm.guest_exec("cat", "/proc/meminfo").stdout.splitlines():
        key, _, rest = line.partition(":")
        if rest.strip().endswith("kB"):
            fields[key] = int(rest.split()[0]) * 1024
    return fields["Cached"] + fields["Buffers"], fields["MemFree"]


def cgroup2_mounted(vm: QemuVM) -> bool:
    return " /sys/fs/cgroup cgroup2 " in vm.guest_exec("cat", "/proc/mounts").stdout


INFLATION = 96 * MiB


async def test_cache_first_hint_reclaims_about_the_inflation_with_memory_reclaim(
    real_vm: QemuVM,
) -> None:
    """The busybox guest mounts no cgroup2: with hint_mount_cgroup balloonctl mounts it, and
    the 6.1 kernel's memory.reclaim takes about the inflation out of the page cache."""
    def fill_cache() -> None:
        real_vm.guest_exec("sh", "-c", f"cat {BIG_FILE} > /dev/null")

    assert not cgroup2_mounted(real_vm)  # as the guest boots (and earlier tests leave it)
    try:
        async with client_for(real_vm, agent=True, hint_mount_cgroup=True) as client:
            ram = await client.guest_ram()
            status = await client.hint_status()
            assert (status.mode, status.enabled) == (HintMode.AGENT, False)
            assert not cgroup2_mounted(real_vm)  # hint off: nothing is changed in the guest

            # Control: with the hint off, an inflation leaves the page cache where it was
            # (the guest has plenty of free memory to give instead).
            await asyncio.to_thread(fill_cache)
            cache, _ = guest_memory(real_vm)
            assert cache >= 150 * MiB
            await client.set_target(ram - INFLATION)
            await client.wait_for_target(ram - INFLATION, timeout=60, stall_timeout=15)
            assert guest_memory(real_vm)[0] >= cache - 16 * MiB
            await client.set_target(ram)
            await client.wait_for_target(ram, timeout=30)

            on = await client.set_hint(True)
            assert (on.mode, on.enabled, on.method) == (HintMode.AGENT, True, HintMethod.RECLAIM)
            assert "memory.reclaim" in on.detail and "mounted cgroup2" in on.detail
            assert cgroup2_mounted(real_vm)
            await asyncio.to_thread(fill_cache)
            cache, free = guest_memory(real_vm)
            await client.set_target(ram - INFLATION)
            await client.wait_for_target(ram - INFLATION, timeout=60, stall_timeout=15)
            hinted = await client.hint_status()
            cache_after, free_after = guest_memory(real_vm)
            await client.set_hint(False)
    finally:
        real_vm.guest_exec("sh", "-c", "umount /sys/fs/cgroup 2>/dev/null; true")
    # About the inflation came out of the cache (measured here: asking 64M took 65-84 MiB),
    # not the whole of it; free memory stayed about where it was.
    assert hinted.method is HintMethod.RECLAIM
    assert hinted.released is not None
    assert INFLATION * 3 // 4 <= hinted.released <= INFLATION + 64 * MiB, hinted
    assert INFLATION * 3 // 4 <= cache - cache_after <= INFLATION + 64 * MiB
    assert cache_after >= 40 * MiB  # far from empty (a drop leaves about 8 MiB)
    assert abs(free_after - free) <= 64 * MiB


async def test_cache_first_hint_drops_the_cache_where_cgroup2_is_not_mounted(
    real_vm: QemuVM,
) -> None:
    assert not cgroup2_mounted(real_vm)
    async with client_for(real_vm, agent=True) as client:
        ram = await client.guest_ram()
        on = await client.set_hint(True)
        assert (on.mode, on.method) == (HintMode.AGENT, HintMethod.DROP)
        assert "cgroup2 not mounted" in on.detail and "hint_mount_cgroup" in on.detail
        await asyncio.to_thread(real_vm.guest_exec, "sh", "-c",
                                f"cat {BIG_FILE} > /dev/null")
        cache, _ = guest_memory(real_vm)
        assert cache >= 150 * MiB
        await client.set_target(ram - INFLATION)
        await client.wait_for_target(ram - INFLATION, timeout=60, stall_timeout=15)
        hinted = await client.hint_status()
        cache_after, _ = guest_memory(real_vm)
        off = await client.set_hint(False)
    assert not cgroup2_mounted(real_vm)  # not told to mount: it did not
    # drop_caches empties the whole clean cache, whatever the inflation needed.
    assert hinted.released is not None and hinted.released >= cache - 32 * MiB, hinted
    assert cache_after < 32 * MiB
    assert "last drop released" in hinted.detail
    assert (off.mode, off.enabled) == (HintMode.AGENT, False)


async def test_device_mode_is_unsupported_on_stock_qemu(real_vm: QemuVM) -> None:
    async with client_for(real_vm) as client:  # no guest agent socket given
        status = await client.hint_status()
        assert status.mode is HintMode.UNSUPPORTED
        assert status.enabled is False
        with pytest.raises(HintUnsupported):
            await client.set_hint(True)
        # Upstream QEMU has no such device property at all.
        with pytest.raises(QMPCommandError) as err:
            await client.execute("qom-set", {"path": await client.device_path(),
                                             "property": "reclaim-cache-first", "value": True})
        assert "not found" in str(err.value)


async def test_unsafe_targets_are_refused_and_nothing_moves(real_vm: QemuVM) -> None:
    async with client_for(real_vm) as client:
        ram = await client.guest_ram()
        with pytest.raises(UnsafeTarget):
            await client.set_target(ram + 512 * MiB)  # QEMU would silently clamp this
        with pytest.raises(UnsafeTarget):
            await client.set_target(64 * MiB, force=True)  # below the hard minimum
        assert await client.query_actual() == ram
        assert client.last_target() is None


async def test_features_of_the_stock_device(real_vm: QemuVM) -> None:
    async with client_for(real_vm) as client:
        features = await client.features()
        assert await client.device_path() == "/machine/peripheral/balloon0"
    assert features.deflate_on_oom is False
    assert features.free_page_reporting is False
    assert features.free_page_hint is False


async def test_a_polite_fleet_reads_the_fixed_facts_once_per_run(real_vm: QemuVM) -> None:
    from balloonctl.fleet import Fleet
    from balloonctl.model import VmRef

    sent: list[str] = []

    def trace(name: str, direction: str, msg: object) -> None:
        if direction == "->" and isinstance(msg, dict):
            sent.append(f"{'qga ' if name.endswith('/qga') else ''}{msg.get('execute')}")

    ref = VmRef(name=real_vm.name, qmp=str(real_vm.qmp_path), qga=str(real_vm.qga_path))
    async with Fleet([ref], trace=trace) as fleet:
        (first,) = await fleet.snapshot()
        assert "query-memory-size-summary" in sent and "qga guest-info" in sent
        sent.clear()
        (second,) = await fleet.snapshot()
    # QEMU's socket file is the same across connections: the run is recognised.
    assert sorted(sent) == ["qmp_capabilities", "qom-get", "qom-get", "query-balloon"]
    assert first.status is VmStatus.OK and second.status is VmStatus.OK
    assert second.guest_ram == first.guest_ram and second.features == first.features
    assert second.hint == first.hint and second.hint.mode is HintMode.AGENT


@pytest.mark.usefixtures("qemu_installed")
async def test_device_properties_given_on_the_command_line_are_reported() -> None:
    # No guest needed: the device's properties are readable while QEMU is paused (-S).
    vm = QemuVM(None, name="props", paused=True, memory=256,
                balloon_props={"deflate-on-oom": True, "free-page-reporting": True})
    with vm:
        async with client_for(vm) as client:
            features = await client.features()
    assert features.deflate_on_oom is True
    assert features.free_page_reporting is True
    assert features.free_page_hint is False


@pytest.mark.usefixtures("qemu_installed")
async def test_guest_without_a_balloon_driver_is_reported_as_such() -> None:
    # A paused VM never runs its guest, so the device is there but no driver ever loads.
    vm = QemuVM(None, name="nodriver", paused=True, memory=512)
    with vm:
        async with client_for(vm) as client:
            assert await client.query_actual() == vm.ram  # QEMU's answer before any driver
            stats = await client.stats()
            assert not stats.reported
            assert stats.total_memory is None and stats.free_memory is None
            state = await client.snapshot()
            assert state.status is VmStatus.NO_DRIVER
            target = await client.set_target(256 * MiB)
            with pytest.raises(DriverNotReady):
                await client.wait_for_target(target, timeout=10, stall_timeout=1)
            assert await client.query_actual() == vm.ram


async def test_vm_without_balloon_device_reports_no_balloon_device(
    real_vm_no_balloon: QemuVM,
) -> None:
    async with client_for(real_vm_no_balloon) as client:
        with pytest.raises(NoBalloonDevice):
            await client.query_actual()
        with pytest.raises(NoBalloonDevice):
            await client.device_path()
        with pytest.raises(NoBalloonDevice):
            await client.set_target(await client.guest_ram())
        state = await client.snapshot()
    assert state.reachable is True
    assert state.has_device is False
    assert state.status is VmStatus.NO_DEVICE


async def test_second_qmp_client_gets_socket_busy(real_vm: QemuVM) -> None:
    async with client_for(real_vm) as first:
        assert await first.query_actual() == real_vm.ram
        second = client_for(real_vm, connect_timeout=1.0)
        with pytest.raises(SocketBusy) as err:
            await second.connect()
        assert "another QMP client" in str(err.value)
        assert await first.query_actual() == real_vm.ram  # the holder is unaffected
    # Once the first lets go, QEMU greets the next client at once.
    async with client_for(real_vm, connect_timeout=3.0) as second:
        assert await second.query_actual() == real_vm.ram
