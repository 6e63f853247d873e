"""The cache-first hint in its three modes: device property, guest agent, unsupported."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from balloonctl.errors import AgentExecBlocked, HintUnsupported
from balloonctl.fake import FakeVM
from balloonctl.fake.guest import MIN_CACHE
from balloonctl.model import HintMethod, HintMode, VmRef
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


async def test_agent_mode_reclaims_what_the_inflation_needs_and_persists(
    fake_vm: FakeVM, tmp_path: Path, client_for: ClientFactory,
) -> None:
    state_file = tmp_path / "state.json"
    async with client_for(fake_vm, agent=True, store=FileStore(state_file)) as client:
        status = await client.hint_status()
        assert status.mode is HintMode.AGENT and not status.enabled
        assert status.method is HintMethod.RECLAIM  # known before the first inflation
        assert (await client.set_hint(True)).enabled

    # A later balloonctl run (a new client, the same state file) still has the hint on.
    guest = fake_vm.guest
    guest.read_file(700 * MiB)
    cache_before, free_before = guest.cache, guest.free
    assert cache_before >= 700 * MiB
    async with client_for(fake_vm, agent=True, store=FileStore(state_file)) as client:
        status = await client.hint_status()
        assert status.mode is HintMode.AGENT and status.enabled
        await client.set_target(GiB + 512 * MiB)  # inflates by 512 MiB
        await client.wait_for_target(GiB + 512 * MiB, timeout=5)
        after = await client.hint_status()
    # The RFC's semantics: the balloon's 512 MiB came out of the page cache, free memory
    # stayed where it was, and the rest of the cache is still there.
    assert abs((cache_before - guest.cache) - 512 * MiB) <= 4 * MiB
    assert abs(guest.free - free_before) <= 4 * MiB
    assert guest.swap_out == 0
    assert after.method is HintMethod.RECLAIM
    assert after.released is not None and abs(after.released - 512 * MiB) <= 4 * MiB
    assert "memory.reclaim" in after.detail and "released 512" in after.detail

    async with client_for(fake_vm, agent=True, store=FileStore(state_file)) as client:
        state = await client.snapshot()
    assert state.hint.enabled and state.hint.released == after.released
    row = state.to_json()
    assert (row["hint_released"], row["hint_method"]) == (after.released, "reclaim")


async def test_agent_mode_reclaim_adds_one_guest_exec_and_reads_no_stats(
    fake_vm: FakeVM, client_for: ClientFactory,
) -> None:
    sent: list[tuple[str, dict[str, Any]]] = []

    def trace(peer: str, direction: str, msg: Any) -> None:
        if direction == "->":
            sent.append((peer, msg))

    async with client_for(fake_vm, agent=True, trace=trace) as client:
        await client.set_hint(True)
        interval = await client.polling_interval()  # the fixture's (tests/conftest.py)
        fake_vm.guest.read_file(600 * MiB)
        sent.clear()
        await client.set_target(GiB + 512 * MiB)
        assert (await client.hint_status()).released is not None
    names = [m.get("execute") for _, m in sent]
    assert names.count("guest-exec") == 1
    assert not [m for _, m in sent if m.get("execute") in ("qom-get", "qom-set")
                and "guest-stats" in str(m.get("arguments", {}).get("property"))]
    assert await client.polling_interval() == interval  # the reclaim left polling alone


async def test_the_guest_reclaims_while_the_balloon_inflates(
    fake_vm: FakeVM, client_for: ClientFactory,
) -> None:
    # The script is started before the balloon command and read after it, so its run time
    # in the guest overlaps the inflation instead of adding to it.
    sent: list[str] = []

    def trace(_peer: str, direction: str, msg: Any) -> None:
        if direction == "->":
            sent.append(str(msg.get("execute")))

    async with client_for(fake_vm, agent=True, trace=trace) as client:
        await client.set_hint(True)
        fake_vm.guest.read_file(600 * MiB)
        assert fake_vm.qga is not None
        fake_vm.qga.exec_duration = 0.3  # the script "runs" 0.3 s in the guest
        sent.clear()
        await client.set_target(GiB + 512 * MiB)
        state = await client.hint_status()
    assert state.released is not None and abs(state.released - 512 * MiB) <= 4 * MiB
    last_status = len(sent) - 1 - sent[::-1].index("guest-exec-status")
    assert sent.index("guest-exec") < sent.index("balloon") < last_status


@pytest.mark.parametrize("slow", ["guest-sync", "guest-exec"])
async def test_the_balloon_does_not_wait_for_the_guest_agents_answer(
    fake_vm: FakeVM, client_for: ClientFactory, slow: str,
) -> None:
    # qemu-ga on virtio-serial sleeps 100 ms whenever its channel reads empty (right after
    # a connect or a close): the handshake and guest-exec go out in one write, and the
    # balloon right behind them; the agent's answers are read after it, within the budget.
    loop = asyncio.get_running_loop()
    seen: list[tuple[float, str, str]] = []

    def trace(_peer: str, direction: str, msg: Any) -> None:
        name = msg.get("execute") or ("pid" if "pid" in str(msg.get("return")) else "")
        seen.append((loop.time(), direction, str(name)))

    async with client_for(fake_vm, agent=True, trace=trace) as client:
        await client.set_hint(True)
        fake_vm.guest.read_file(600 * MiB)
        fake_vm.faults.delay[slow] = 0.5
        seen.clear()
        started = loop.time()
        await client.set_target(GiB + 512 * MiB)
        state = await client.hint_status()
    order = [(d, n) for _, d, n in seen if n in ("guest-sync", "guest-exec", "balloon", "pid")]
    assert order[:4] == [("->", "guest-sync"), ("->", "guest-exec"), ("->", "balloon"),
                         ("<-", "pid")], order
    balloon_at = next(t for t, d, n in seen if (d, n) == ("->", "balloon"))
    assert balloon_at - started < 0.25  # not held up by the agent's 0.5 s
    # The report still counts: the reclaim ran and what it released is recorded.
    assert state.released is not None and abs(state.released - 512 * MiB) <= 4 * MiB


async def test_agent_mode_asking_more_than_the_cache_reclaims_what_there_is(
    fake_vm: FakeVM, client_for: ClientFactory,
) -> None:
    guest = fake_vm.guest
    async with client_for(fake_vm, agent=True) as client:
        await client.set_hint(True)
        cache = guest.cache  # about 100 MiB: less than the inflation
        await client.set_target(GiB + 512 * MiB)
        state = await client.hint_status()
    assert state.released is not None and cache - 32 * MiB <= state.released < cache
    assert guest.cache >= MIN_CACHE  # hot pages stay
    assert guest.swap_out == 0  # no anonymous memory swapped to make up the rest
    assert "less than asked" in state.detail
    assert guest.balloon_target == 512 * MiB  # the inflation went on


async def test_agent_mode_falls_back_to_drop_without_memory_reclaim(
    fake_vm_factory: Any, client_for: ClientFactory,
) -> None:
    vm: FakeVM = await fake_vm_factory(qga_memory_reclaim=False)
    async with client_for(vm, agent=True) as client:
        status = await client.set_hint(True)
        assert status.method is HintMethod.DROP
        assert "memory.reclaim missing" in status.detail
        vm.guest.read_file(600 * MiB)
        cache = vm.guest.cache
        await client.set_target(1792 * MiB)  # only 256 MiB, but a drop empties it all
        after = await client.hint_status()
        assert (await client.snapshot()).to_json()["hint_method"] == "drop"
    assert vm.guest.cache == 0
    assert after.released == cache and "last drop released" in after.detail


async def test_without_cgroup2_the_hint_drops_unless_told_to_mount(
    fake_vm_factory: Any, client_for: ClientFactory,
) -> None:
    vm: FakeVM = await fake_vm_factory(qga_cgroup2=False)
    async with client_for(vm, agent=True) as client:
        status = await client.set_hint(True)
        assert status.method is HintMethod.DROP
        assert "cgroup2 not mounted" in status.detail and "hint_mount_cgroup" in status.detail
        await client.set_target(GiB + 512 * MiB)
    assert not vm.kernel.cgroup2_mounted  # never mounted without being told to

    store = MemoryStore()
    async with client_for(vm, agent=True, store=store, hint_mount_cgroup=True) as client:
        # With the hint off, balloonctl changes nothing in the guest, even when allowed to.
        assert (await client.hint_status()).method is HintMethod.DROP
        assert not vm.kernel.cgroup2_mounted
        on = await client.set_hint(True)
        assert vm.kernel.cgroup2_mounted
        assert on.method is HintMethod.RECLAIM and "balloonctl mounted cgroup2" in on.detail
        await client.set_target(GiB)
        await client.wait_for_target(GiB, timeout=5)
        vm.guest.read_file(600 * MiB)
        cache = vm.guest.cache
        await client.set_target(GiB - 256 * MiB)
        assert (await client.hint_status()).method is HintMethod.RECLAIM
    assert abs((cache - vm.guest.cache) - 256 * MiB) <= 4 * MiB


@pytest.mark.parametrize("fault", ["delay-exec", "slow-process", "garbage-status",
                                   "drop-exec", "silent-agent"])
async def test_a_bad_or_slow_guest_agent_never_holds_up_the_inflation(
    fake_vm: FakeVM, client_for: ClientFactory, fault: str,
) -> None:
    async with client_for(fake_vm, agent=True, command_timeout=2.0) as client:
        await client.set_hint(True)
        assert fake_vm.qga is not None
        if fault == "delay-exec":
            fake_vm.faults.delay["guest-exec"] = 30.0
        elif fault == "slow-process":
            fake_vm.qga.exec_duration = 30.0
        elif fault == "garbage-status":
            fake_vm.faults.garbage_on.add("guest-exec-status")
        elif fault == "drop-exec":
            fake_vm.faults.drop_on.add("guest-exec")
        else:  # the agent takes connections but answers nothing at all
            for cmd in ("guest-sync", "guest-info", "guest-ping", "guest-exec"):
                fake_vm.faults.delay[cmd] = 30.0
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await client.set_target(GiB + 512 * MiB) == GiB + 512 * MiB
        took = loop.time() - started
        assert fake_vm.guest.balloon_target == 512 * MiB
        assert took < client.command_timeout, took  # sent within the command's timeout
        # The failure is recorded (hint status shows it once the agent answers again).
        remembered = await client.targets.remembered()
    assert remembered["hint_error"] and remembered["hint_released"] is None


async def test_a_reclaim_script_reply_of_the_wrong_shape_is_recorded(
    fake_vm: FakeVM, client_for: ClientFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The guest's shell prints something else (a hostile guest, another script version).
    import balloonctl.fake.agent_server as agent_server

    async with client_for(fake_vm, agent=True) as client:
        await client.set_hint(True)
        monkeypatch.setattr(agent_server, "_reclaim_script",
                            lambda *a: (0, b"balloonctl-reclaim=1\nmethod=zap\n", b""))
        await client.set_target(GiB + 512 * MiB)
        assert fake_vm.guest.balloon_target == 512 * MiB
        state = await client.hint_status()
    assert "last reclaim failed" in state.detail and "unexpected" in state.detail


async def test_agent_mode_leaves_deflation_alone(
    fake_vm: FakeVM, client_for: ClientFactory,
) -> None:
    async with client_for(fake_vm, agent=True, store=MemoryStore()) as client:
        await client.set_target(GiB)
        await client.wait_for_target(GiB, timeout=5)
        await client.set_hint(True)
        fake_vm.guest.read_file(100 * MiB)
        cache = fake_vm.guest.cache
        await client.set_target(GiB + 256 * MiB)  # a deflation: no reclaim
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
    assert "last reclaim failed" in state.detail and "Permission denied" in state.detail


async def test_agent_mode_hint_belongs_to_one_run_of_the_vm(
    fake_vm_factory: Any, tmp_path: Path, client_for: ClientFactory,
) -> None:
    state_file = tmp_path / "state.json"
    first: FakeVM = await fake_vm_factory()
    async with client_for(first, agent=True, store=FileStore(state_file)) as client:
        await client.set_hint(True)
        first.guest.read_file(200 * MiB)
        await client.set_target(GiB + 512 * MiB)  # an inflation: cache is reclaimed
        assert (await client.hint_status()).released is not None
    await first.stop()  # the VM restarts (a fresh guest) on the same sockets
    vm: FakeVM = await fake_vm_factory()
    vm.guest.read_file(200 * MiB)
    cache = vm.guest.cache
    async with client_for(vm, agent=True, store=FileStore(state_file)) as client:
        status = await client.hint_status()
        assert status.mode is HintMode.AGENT and not status.enabled
        assert status.released is None and "released" not in status.detail
        await client.set_target(GiB + 512 * MiB)  # an inflation, but no reclaim this run
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
