"""Fleet: many fake VMs at once, partial failure, polite and held connections, events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from rawqmp import RawQMP, poll_until

from balloonctl.errors import NoBalloonDevice, QMPTimeout, UnknownVM, UsageError
from balloonctl.fake import FakeVM
from balloonctl.fleet import CONNECTED, DISCONNECTED, Backoff, DataSource, Fleet
from balloonctl.model import HintMode, VmRef, VmStatus
from balloonctl.qmp import BalloonClient, BalloonEvent
from balloonctl.units import GiB, parse_target


def refs(*vms: FakeVM) -> list[VmRef]:
    return [VmRef(name=vm.name, qmp=str(vm.qmp_path), qga=str(vm.qga_path)) for vm in vms]


async def three(factory: Any, **vm2: Any) -> list[FakeVM]:
    return [await factory("vm1"), await factory("vm2", **vm2), await factory("vm3")]


async def test_fleet_is_a_data_source(fake_vm: FakeVM) -> None:
    source: DataSource = Fleet(refs(fake_vm))
    assert list(source.names) == ["vm1"]
    await source.close()


async def test_snapshot_with_a_busy_vm(fake_vm_factory: Any) -> None:
    vms = await three(fake_vm_factory)
    vms[1].faults.never_greet = True
    async with Fleet(refs(*vms), connect_timeout=0.3) as fleet:
        started = time.monotonic()
        states = await fleet.snapshot()
        # the busy VM costs its 0.3 s connect timeout, not the 3 s default
        assert time.monotonic() - started < 2.5
    assert [s.name for s in states] == ["vm1", "vm2", "vm3"]
    assert [s.status for s in states] == [VmStatus.OK, VmStatus.BUSY, VmStatus.OK]
    assert "no greeting" in (states[1].error or "")
    assert states[0].actual == 2 * GiB and states[0].hint.mode is HintMode.AGENT


async def test_snapshot_each_never_waits_for_a_busy_vm(fake_vm_factory: Any) -> None:
    vms = await three(fake_vm_factory)
    async with Fleet(refs(*vms), connect_timeout=20.0) as fleet:
        first = await fleet.snapshot()
        assert all(s.reachable for s in first)
        vms[1].faults.never_greet = True  # vm2's socket now stays silent, like a busy one
        for _ in range(2):  # the second round finds vm2's read still under way
            started = time.monotonic()
            got = {s.name: s async for s in fleet.snapshot_each(patience=0.3)}
            # well under the 20 s connect timeout the busy VM would have cost
            assert time.monotonic() - started < 10
            assert sorted(got) == ["vm1", "vm2", "vm3"]
            assert got["vm1"].taken_at > first[0].taken_at
            assert got["vm3"].taken_at > first[2].taken_at
            assert got["vm2"] is first[1]  # its last state, not a second connection
        vms[1].faults.never_greet = False


async def test_an_unreachable_vm_is_retried_only_after_its_backoff(
    fake_vm_factory: Any,
) -> None:
    vms = await three(fake_vm_factory)
    async with Fleet(refs(*vms)) as fleet:
        await vms[1].stop()
        failed = await fleet.snapshot()
        assert failed[1].status is VmStatus.UNREACHABLE
        again = await fleet.snapshot()  # at once: vm2 is in backoff, the others are read
        assert again[1] is failed[1]
        assert again[0].taken_at > failed[0].taken_at
        await vms[1].start()
        back = await poll_until_state(fleet, "vm2", VmStatus.OK)
        assert back.reachable


async def poll_until_state(fleet: Fleet, name: str, status: VmStatus,
                           within: float = 10.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        state = {s.name: s for s in await fleet.snapshot()}[name]
        if state.status is status:
            return state
        assert time.monotonic() < deadline, f"{name} still {state.status}: {state.error}"
        await asyncio.sleep(0.05)


async def test_run_each_partial_failure(fake_vm_factory: Any) -> None:
    vms = await three(fake_vm_factory, balloon=False)
    async with Fleet(refs(*vms)) as fleet:
        results = await fleet.run_each(None, lambda c: c.set_target(parse_target("1G")))
    assert results["vm1"] == GiB and results["vm3"] == GiB
    err = results["vm2"]
    assert isinstance(err, NoBalloonDevice) and err.vm == "vm2"
    assert vms[0].guest.balloon_target > 0 and vms[2].guest.balloon_target > 0


async def test_a_slow_vm_is_bounded_by_timeouts(fake_vm_factory: Any) -> None:
    vms = await three(fake_vm_factory)
    vms[1].faults.delay["query-balloon"] = 20.0
    async with Fleet(refs(*vms), command_timeout=0.3) as fleet:
        started = time.monotonic()
        results = await fleet.run_each(["vm2", "vm1"], BalloonClient.query_actual)
        assert time.monotonic() - started < 10
    assert list(results) == ["vm2", "vm1"]
    assert isinstance(results["vm2"], QMPTimeout) and results["vm1"] == 2 * GiB
    vms[1].faults.delay.clear()


async def test_a_slow_vm_shows_in_the_snapshot(fake_vm_factory: Any) -> None:
    vms = await three(fake_vm_factory)
    vms[1].faults.delay["query-balloon"] = 20.0
    async with Fleet(refs(*vms), command_timeout=0.3) as fleet:
        started = time.monotonic()
        states = await fleet.snapshot()
        assert time.monotonic() - started < 10
    assert states[1].error_kind == "QMPTimeout" and not states[1].reachable
    assert states[0].status is VmStatus.OK and states[2].status is VmStatus.OK
    vms[1].faults.delay.clear()


async def test_run_each_limit_bounds_a_whole_call(fake_vm: FakeVM) -> None:
    async def slow(client: BalloonClient) -> int:
        await asyncio.sleep(5)
        return 0

    async with Fleet(refs(fake_vm)) as fleet:
        results = await fleet.run_each(None, slow, limit=0.2)
    assert isinstance(results["vm1"], QMPTimeout) and "gave up after 0.2s" in str(
        results["vm1"])


def test_duplicate_names_are_refused(fake_dir: Any) -> None:
    ref = VmRef(name="vm1", qmp=str(fake_dir / "a.qmp"))
    with pytest.raises(UsageError, match="two VMs named 'vm1'"):
        Fleet([ref, ref])


async def test_unknown_vm(fake_vm: FakeVM) -> None:
    async with Fleet(refs(fake_vm)) as fleet:
        with pytest.raises(UnknownVM, match="no VM named 'web'"):
            await fleet.set_target("web", parse_target("1G"))
        with pytest.raises(UnknownVM):
            await fleet.run_each(["vm1", "web"], BalloonClient.query_actual)


async def test_polite_mode_leaves_the_socket_free(fake_vm_factory: Any) -> None:
    vms = await three(fake_vm_factory)
    async with Fleet(refs(*vms)) as fleet:
        await fleet.snapshot()
        assert await fleet.set_target("vm1", parse_target("1G")) == GiB
        await fleet.enable_stats("vm2", 1)
        state = await fleet.set_hint("vm3", True)
        assert state.mode is HintMode.AGENT and state.enabled
        # Between operations another QMP client gets in at once.
        for vm in vms:
            async with await RawQMP.open(vm.qmp_path, reply_timeout=0.5) as raw:
                assert "actual" in await raw.execute("query-balloon")
        states = await fleet.snapshot()
    assert states[0].target == GiB
    assert states[1].polling_interval == 1
    assert states[2].hint.enabled
    events = [e async for e in fleet.events()]
    assert events == []  # the polite mode holds no connection, so it hears no events


def _sent_by(log: list[tuple[str, str]], vm: str) -> list[str]:
    return sorted(cmd for name, cmd in log if name == vm)


async def test_a_polite_poll_asks_only_for_what_changes(fake_vm_factory: Any) -> None:
    vm1, vm2 = await fake_vm_factory("vm1"), await fake_vm_factory("vm2")
    sent: list[tuple[str, str]] = []  # (vm or vm/qga, command) for everything sent

    def trace(name: str, direction: str, msg: Any) -> None:
        if direction == "->":
            sent.append((name, str(msg.get("execute"))))

    async with Fleet(refs(vm1, vm2), trace=trace) as fleet:
        first = await fleet.snapshot()
        assert "query-memory-size-summary" in _sent_by(sent, "vm1")
        assert "guest-info" in _sent_by(sent, "vm1/qga")
        sent.clear()
        second = await fleet.snapshot()
        # The device, guest RAM, features and the agent's answer are this run's: kept.
        assert _sent_by(sent, "vm1") == ["qmp_capabilities", "qom-get", "qom-get",
                                         "query-balloon"]
        assert _sent_by(sent, "vm1/qga") == []
        assert second[0].guest_ram == first[0].guest_ram == 2 * GiB
        assert second[0].features == first[0].features
        assert second[0].hint == first[0].hint and second[0].hint.mode is HintMode.AGENT
        assert second[0].status is VmStatus.OK

        # vm1 restarts: a fresh QEMU (here with more RAM) behind the same socket path.
        await vm1.stop()
        vm1 = await fake_vm_factory("vm1", ram=3 * GiB)
        sent.clear()
        third = await fleet.snapshot()
        assert third[0].guest_ram == 3 * GiB and third[0].actual == 3 * GiB
        assert {"query-cpus-fast", "query-memory-size-summary", "qom-list"} <= set(
            _sent_by(sent, "vm1"))
        assert "guest-info" in _sent_by(sent, "vm1/qga")
        assert _sent_by(sent, "vm2") == ["qmp_capabilities", "qom-get", "qom-get",
                                         "query-balloon"]

        # The device went away under a cached path: the next poll looks for it again.
        vm2.faults.errors["qom-get"] = ("DeviceNotFound",
                                        "Device '/machine/peripheral/balloon0' not found")
        failed = (await fleet.snapshot())[1]
        assert failed.error_kind == "QMPCommandError" and "not found" in (failed.error or "")
        vm2.faults.errors.clear()
        sent.clear()
        fourth = await fleet.snapshot()
        assert "qom-list" in _sent_by(sent, "vm2") and fourth[1].status is VmStatus.OK
        assert "query-memory-size-summary" not in _sent_by(sent, "vm2")


async def test_concurrency_of_one_still_visits_everyone(fake_vm_factory: Any) -> None:
    vms = await three(fake_vm_factory)
    async with Fleet(refs(*vms), concurrency=1) as fleet:
        states = await fleet.snapshot()
    assert [s.status for s in states] == [VmStatus.OK] * 3


async def test_stream_yields_fresh_snapshots(fake_vm: FakeVM) -> None:
    async with Fleet(refs(fake_vm)) as fleet:
        stream = fleet.stream(0.05)
        first = await anext(stream)
        await fleet.set_target("vm1", GiB)
        second = await poll_until(lambda: _next_converging(stream), within=3)
        await stream.aclose()  # type: ignore[attr-defined]
    assert first[0].target is None and second[0].target == GiB


async def _next_converging(stream: AsyncIterator[list[Any]]) -> list[Any] | None:
    states = await anext(stream)
    return states if states[0].target is not None else None


async def _collect(fleet: Fleet, into: list[tuple[str, BalloonEvent]]) -> None:
    async for item in fleet.events():
        into.append(item)


async def test_hold_mode_events_and_reconnect(fake_vm_factory: Any) -> None:
    vm1, vm2 = await fake_vm_factory("vm1"), await fake_vm_factory("vm2")
    fleet = Fleet(refs(vm1, vm2), hold=True, connect_timeout=0.5)
    got: list[tuple[str, BalloonEvent]] = []
    task = asyncio.create_task(_collect(fleet, got))
    try:
        await poll_until(lambda: sum(e.name == CONNECTED for _, e in got) == 2, within=3,
                         what="both connected")
        connected = next(e for n, e in got if n == "vm1" and e.name == CONNECTED)
        assert connected.data["state"].actual == 2 * GiB  # state re-read on connect
        await fleet.set_target("vm1", GiB)
        await poll_until(lambda: any(n == "vm1" and e.name == "BALLOON_CHANGE"
                                     for n, e in got), within=3, what="BALLOON_CHANGE")
        # The held connection blocks other clients, as QEMU's one-client socket does.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await RawQMP.open(vm2.qmp_path, reply_timeout=0.3)

        await vm1.shutdown()
        await poll_until(lambda: any(n == "vm1" and e.name == DISCONNECTED for n, e in got),
                         within=3, what="DISCONNECTED")
        states = await fleet.snapshot()
        assert states[0].status is VmStatus.UNREACHABLE and states[1].status is VmStatus.OK
        connects = sum(n == "vm1" and e.name == CONNECTED for n, e in got)
        await vm1.start()
        await poll_until(lambda: sum(n == "vm1" and e.name == CONNECTED for n, e in got)
                         > connects, within=5, what="reconnect")
        states = await poll_until(
            lambda: _all_ok(fleet), within=3, what="snapshot after reconnect")
        assert states[0].actual is not None
    finally:
        await fleet.close()
        await asyncio.wait_for(task, 2)  # close() ends the event stream


async def _all_ok(fleet: Fleet) -> list[Any] | None:
    states = await fleet.snapshot()
    return states if all(s.reachable for s in states) else None


def test_backoff_doubles_and_is_capped() -> None:
    b = Backoff(initial=0.5, cap=4.0)
    delays = []
    for _ in range(6):
        b.failed(100.0)
        delays.append(b.delay)
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert b.wait(101.0) == 3.0
    b.succeeded()
    assert b.wait(100.0) == 0.0 and b.delay == 0.0


def test_the_library_layer_imports_no_cli_tui_or_http_packages() -> None:
    import subprocess
    import sys

    code = (
        "import sys, balloonctl.qmp, balloonctl.qga, balloonctl.fleet\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'typer', 'textual', 'httpx', 'starlette', 'uvicorn', 'rich'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == ""


async def test_discovered_vms_join_the_next_snapshot_and_a_failing_discover_adds_none(
    fake_vm_factory: Any,
) -> None:
    vm1 = await fake_vm_factory("vm1")
    found: list[VmRef] = refs(vm1)
    broken = False

    def discover() -> list[VmRef]:
        if broken:
            raise OSError("the directory went away")
        return found

    async with Fleet(refs(vm1), discover=discover) as fleet:
        assert [s.name for s in await fleet.snapshot()] == ["vm1"]
        vm2 = await fake_vm_factory("vm2", ram=GiB)
        found = refs(vm1, vm2)
        states = {s.name: s for s in await fleet.snapshot()}
        assert list(states) == ["vm1", "vm2"] and fleet.names == ["vm1", "vm2"]
        assert states["vm2"].reachable and states["vm2"].guest_ram == GiB
        broken = True
        each = [s.name async for s in fleet.snapshot_each()]
        assert sorted(each) == ["vm1", "vm2"]  # nothing lost, nothing added
