"""The cache-first hint in its three modes: device property, guest agent, unsupported."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from balloonctl.cachefirst import STATS_POLL_INTERVAL, STATS_REFRESH_WAIT
from balloonctl.errors import AgentExecBlocked, HintUnsupported
from balloonctl.fake import FakeVM
from balloonctl.model import HintMode, VmRef
from balloonctl.qmp import BalloonClient
from balloonctl.store import FileStore, MemoryStore
from balloonctl.units import GiB, MiB

ClientFactory = Callable[..., BalloonClient]


async def test_device_mode_toggles_the_qom_property(
    fake_vm_factory: Any, client_for: ClientFactory,
) -> None:
    vm = await fake_vm_factory(hint_device=True)
    async with client_for(vm) as client:
        state = await client.hint_status()
        assert state.mode is HintMode.DEVICE and not state.enabled
        on = await client.set_hint(True)
        assert on.mode is HintMode.DEVICE and on.enabled
        assert vm.guest.hint is True
        off = await client.set_hint(False)
        assert not off.enabled and vm.guest.hint is False
        assert (await client.snapshot()).hint.mode is HintMode.DEVICE


async def test_device_mode_wins_over_the_agent(
    fake_vm_factory: Any, client_for: ClientFactory,
) -> None:
    vm = await fake_vm_factory(hint_device=True)
    async with client_for(vm, agent=True) as client:
        assert (await client.set_hint(True)).mode is HintMode.DEVICE


async def test_unsupported_without_device_property_or_agent(
    fake_vm: FakeVM, client_for: ClientFactory,
) -> None:
    async with client_for(fake_vm) as client:
        state = await client.hint_status()
        assert state.mode is HintMode.UNSUPPORTED and not state.enabled
        with pytest.raises(HintUnsupported) as err:
            await client.set_hint(True)
        assert "stock QEMU has no reclaim-cache-first property" in str(err.value)
        assert "--qga" in str(err.value) and "guest-exec allowed" in str(err.value)
        # Turning off what cannot be on is fine.
        assert not (await client.set_hint(False)).enabled
        assert (await client.snapshot()).hint.mode is HintMode.UNSUPPORTED


async def test_agent_mode_drops_cache_before_inflating_and_persists(
    fake_vm_factory: Any, tmp_path: Path, client_for: ClientFactory,
) -> None:
    fake_vm: FakeVM = await fake_vm_factory(stats_interval=0)  # polling off: set to 1 s
    state_file = tmp_path / "state.json"
    async with client_for(fake_vm, agent=True, store=FileStore(state_file)) as client:
        status = await client.hint_status()
        assert status.mode is HintMode.AGENT and not status.enabled
        assert (await client.set_hint(True)).enabled

    # A later balloonctl run (a new client, the same state file) still has the hint on.
    fake_vm.guest.read_file(400 * MiB)
    cache_before = fake_vm.guest.cache
    assert cache_before >= 300 * MiB
    async with client_for(fake_vm, agent=True, store=FileStore(state_file)) as client:
        status = await client.hint_status()
        assert status.mode is HintMode.AGENT and status.enabled
        await client.set_target(GiB + 512 * MiB)  # an inflation
        assert fake_vm.guest.cache < cache_before // 4
        after = await client.hint_status()
    assert after.released is not None
    assert abs(after.released - cache_before) <= 64 * MiB
    assert "released" in after.detail
    assert await client.polling_interval() == 0  # the temporary 1 s interval was undone
    await client.close()

    async with client_for(fake_vm, agent=True, store=FileStore(state_file)) as client:
        state = await client.snapshot()
    assert state.hint.enabled and state.hint.released == after.released
    assert state.to_json()["hint_released"] == after.released


async def test_agent_mode_leaves_deflation_alone(
    fake_vm: FakeVM, client_for: ClientFactory,
) -> None:
    async with client_for(fake_vm, agent=True, store=MemoryStore()) as client:
        await client.set_target(GiB)
        await client.wait_for_target(GiB, timeout=5)
        await client.set_hint(True)
        fake_vm.guest.read_file(100 * MiB)
        cache = fake_vm.guest.cache
        await client.set_target(GiB + 256 * MiB)  # a deflation: no drop
        assert fake_vm.guest.cache >= cache
        assert (await client.hint_status()).released is None


async def test_agent_mode_with_hint_off_does_not_drop(
    fake_vm: FakeVM, client_for: ClientFactory,
) -> None:
    fake_vm.guest.read_file(200 * MiB)
    cache = fake_vm.guest.cache
    async with client_for(fake_vm, agent=True) as client:
        await client.set_target(GiB + 512 * MiB)
    assert fake_vm.guest.cache >= cache - 8 * MiB


async def test_agent_with_exec_blocked(fake_vm_factory: Any, client_for: ClientFactory) -> None:
    vm = await fake_vm_factory(agent_exec=False)
    async with client_for(vm, agent=True) as client:
        state = await client.hint_status()
        assert state.mode is HintMode.UNSUPPORTED
        assert "guest-exec" in state.detail
        with pytest.raises(AgentExecBlocked, match="guest-exec"):
            await client.set_hint(True)


async def test_unreachable_agent_is_reported_not_raised(fake_vm: FakeVM,
                                                        fake_dir: Path) -> None:
    client = BalloonClient(str(fake_vm.qmp_path), qga=str(fake_dir / "gone.qga"),
                           connect_timeout=1.0)
    async with client:
        state = await client.snapshot()
        assert state.reachable and state.error is None
        assert state.hint.mode is HintMode.UNSUPPORTED
        assert "unreachable" in state.hint.detail
        with pytest.raises(HintUnsupported, match="unreachable"):
            await client.set_hint(True)


async def test_agent_mode_with_polling_already_on_keeps_the_interval(
    fake_vm: FakeVM, client_for: ClientFactory,
) -> None:
    async with client_for(fake_vm, agent=True) as client:
        await client.enable_stats(1)
        await client.set_hint(True)
        fake_vm.guest.read_file(200 * MiB)
        cache = fake_vm.guest.cache
        await client.set_target(GiB + 512 * MiB)
        state = await client.hint_status()
        assert await client.polling_interval() == 1
    assert state.released is not None and state.released >= cache - 64 * MiB


async def test_agent_mode_drop_failure_is_recorded_and_the_inflation_goes_on(
    fake_vm: FakeVM, client_for: ClientFactory,
) -> None:
    async with client_for(fake_vm, agent=True) as client:
        await client.set_hint(True)
        fake_vm.faults.errors["guest-exec"] = (
            "GenericError", "Guest agent command failed, error was 'Permission denied'")
        assert await client.set_target(GiB + 512 * MiB) == GiB + 512 * MiB
        assert fake_vm.guest.balloon_target == 512 * MiB
        state = await client.hint_status()
    assert state.mode is HintMode.AGENT and state.enabled
    assert state.released is None
    assert "last drop failed" in state.detail and "Permission denied" in state.detail


async def test_agent_mode_hint_belongs_to_one_run_of_the_vm(
    fake_vm_factory: Any, tmp_path: Path, client_for: ClientFactory,
) -> None:
    state_file = tmp_path / "state.json"
    first: FakeVM = await fake_vm_factory()
    async with client_for(first, agent=True, store=FileStore(state_file)) as client:
        await client.set_hint(True)
        first.guest.read_file(200 * MiB)
        await client.set_target(GiB + 512 * MiB)  # an inflation: the cache is dropped
        assert (await client.hint_status()).released is not None
    await first.stop()  # the VM restarts (a fresh guest) on the same sockets
    vm: FakeVM = await fake_vm_factory()
    vm.guest.read_file(200 * MiB)
    cache = vm.guest.cache
    async with client_for(vm, agent=True, store=FileStore(state_file)) as client:
        status = await client.hint_status()
        assert status.mode is HintMode.AGENT and not status.enabled
        assert status.released is None and "released" not in status.detail
        await client.set_target(GiB + 512 * MiB)  # an inflation, but no drop on this run
        assert vm.guest.cache >= cache - 8 * MiB
        assert not (await client.snapshot()).hint.enabled


async def test_a_new_run_starts_with_the_inventorys_hint_preference(
    fake_vm: FakeVM, tmp_path: Path, client_for: ClientFactory,
) -> None:
    store = FileStore(tmp_path / "state.json")
    ref = VmRef(fake_vm.name, str(fake_vm.qmp_path), qga=str(fake_vm.qga_path), hint=True)
    async with BalloonClient.from_ref(ref, store=store, connect_timeout=1.0) as client:
        assert (await client.hint_status()).enabled
        assert not (await client.set_hint(False)).enabled  # this run: off, as asked
    async with BalloonClient.from_ref(ref, store=store, connect_timeout=1.0) as client:
        assert not (await client.hint_status()).enabled
    await fake_vm.stop()
    await fake_vm.start()
    async with BalloonClient.from_ref(ref, store=store, connect_timeout=1.0) as client:
        assert (await client.hint_status()).enabled


async def test_agent_mode_inflation_polls_stats_sparingly(
    fake_vm: FakeVM, client_for: ClientFactory,
) -> None:
    sent: list[dict[str, Any]] = []

    def trace(_vm: str, direction: str, msg: Any) -> None:
        if direction == "->":
            sent.append(msg)

    async with client_for(fake_vm, agent=True, trace=trace) as client:
        await client.set_hint(True)
        fake_vm.guest.read_file(200 * MiB)
        sent.clear()
        loop = asyncio.get_running_loop()
        started = loop.time()
        await client.set_target(GiB + 512 * MiB)
        elapsed = loop.time() - started
        assert (await client.hint_status()).released is not None
    stats_reads = [m for m in sent if m.get("execute") == "qom-get"
                   and m.get("arguments", {}).get("property") == "guest-stats"]
    # Two samples a polling interval (1 s) apart, looked for every STATS_POLL_INTERVAL:
    # about ten reads, where polling every 50 ms took some forty.
    per_wait = STATS_REFRESH_WAIT / STATS_POLL_INTERVAL + 1
    assert len(stats_reads) <= min(20, 2 * per_wait + 2)
    assert elapsed < 2 * STATS_REFRESH_WAIT + 2
