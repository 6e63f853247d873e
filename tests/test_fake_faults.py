"""Fault injection: every switch, seen from a client through the real socket."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from rawqmp import RawQMP, RawQMPError, poll_until

from balloonctl.fake import FakeVM
from balloonctl.units import GiB, MiB

BALLOON = "/machine/peripheral/balloon0"


async def test_never_greet(fake_vm: FakeVM) -> None:
    fake_vm.faults.never_greet = True
    async with await RawQMP.connect(fake_vm.qmp_path) as qmp:
        qmp.send({"execute": "qmp_capabilities"})
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(qmp.recv(), 0.3)
    # Switched off, the next client is greeted again.
    fake_vm.faults.never_greet = False
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        assert await qmp.execute("query-balloon") == {"actual": 2 * GiB}


async def test_drop_on_command(fake_vm: FakeVM) -> None:
    fake_vm.faults.drop_on.add("query-balloon")
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        assert await qmp.execute("query-status") == {
            "status": "running",
            "singlestep": False,
            "running": True,
        }
        with pytest.raises(EOFError):
            await qmp.execute("query-balloon")


async def test_garbage_on_command(fake_vm: FakeVM) -> None:
    fake_vm.faults.garbage_on.add("query-balloon")
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        with pytest.raises(json.JSONDecodeError):
            await qmp.execute("query-balloon")


async def test_delay_on_command(fake_vm: FakeVM) -> None:
    fake_vm.faults.delay["query-balloon"] = 1.5
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(qmp.execute("query-balloon"), 0.2)
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await qmp.execute("query-balloon") == {"actual": 2 * GiB}
        assert loop.time() - start >= 1.45
        # Other commands are not delayed.
        start = loop.time()
        await qmp.execute("query-status")
        assert loop.time() - start < 1.2  # well under the 1.5 s delay


async def test_error_on_command(fake_vm: FakeVM) -> None:
    fake_vm.faults.errors["qom-get"] = ("GenericError", "injected failure")
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        with pytest.raises(RawQMPError) as err:
            await qmp.execute("qom-get", {"path": BALLOON, "property": "guest-stats"})
        assert (err.value.error_class, err.value.desc) == ("GenericError", "injected failure")
        del fake_vm.faults.errors["qom-get"]
        assert (await qmp.execute("qom-get", {"path": BALLOON, "property": "guest-stats"}))[
            "last-update"
        ] > 0


async def test_faults_apply_to_the_agent(fake_vm: FakeVM) -> None:
    fake_vm.faults.errors["guest-ping"] = ("GenericError", "agent says no")
    fake_vm.faults.drop_on.add("guest-info")
    async with await RawQMP.connect(fake_vm.qga_path) as ga:
        with pytest.raises(RawQMPError, match="agent says no"):
            await ga.execute("guest-ping")
        with pytest.raises(EOFError):
            await ga.execute("guest-info")


async def test_stale_stats(fake_vm: FakeVM) -> None:
    device = fake_vm.device
    assert device is not None
    stats = {"path": BALLOON, "property": "guest-stats"}
    interval = {"path": BALLOON, "property": "guest-stats-polling-interval"}
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        fake_vm.faults.stale_stats = True
        frozen = await qmp.execute("qom-get", stats)
        fake_vm.guest.read_file(64 * MiB)
        polls = device.stats_polls
        await qmp.execute("qom-set", {**interval, "value": 1})
        assert await qmp.execute("qom-get", interval) == 1
        # The polling timer fires twice: a healthy guest would have reported twice.
        await poll_until(lambda: device.stats_polls >= polls + 2, within=5,
                         what="two stats polling periods")
        assert await qmp.execute("qom-get", stats) == frozen
        # The guest recovers: samples flow again.
        fake_vm.faults.stale_stats = False

        async def fresh() -> bool:
            now = await qmp.execute("qom-get", stats)
            return bool(
                now["stats"]["stat-disk-caches"] == fake_vm.guest.cache
                and now["last-update"] > frozen["last-update"]
            )

        await poll_until(fresh, within=3, what="stats to flow again")


async def test_stuck_balloon(fake_vm: FakeVM) -> None:
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        await qmp.execute("balloon", {"value": GiB + GiB // 2})
        await poll_until(lambda: fake_vm.guest.actual < 2 * GiB, what="the balloon to start")
        fake_vm.faults.stuck = True
        stuck_at = (await qmp.execute("query-balloon"))["actual"]
        device = fake_vm.device
        assert device is not None
        for _ in range(5):
            # A few timer ticks pass (each would move the balloon 40 MiB); actual must not.
            await poll_until(lambda after=device.ticks + 3: device.ticks >= after,
                             what="three timer ticks")
            assert (await qmp.execute("query-balloon"))["actual"] == stuck_at
        fake_vm.faults.stuck = False
        await poll_until(lambda: fake_vm.guest.actual == GiB + GiB // 2)


async def test_guest_shutdown(fake_vm: FakeVM) -> None:
    waiting = None
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        waiting = await RawQMP.connect(fake_vm.qmp_path)
        await fake_vm.shutdown()
        event = await qmp.next_event("SHUTDOWN")
        assert event["data"] == {"guest": True, "reason": "guest-shutdown"}
        assert set(event["timestamp"]) == {"seconds", "microseconds"}
        with pytest.raises(EOFError):
            await qmp.recv()
    # The client that was waiting for its turn is dropped too.
    with pytest.raises(EOFError):
        await waiting.recv()
    await waiting.close()
    assert not fake_vm.qmp_path.exists()
    assert not fake_vm.qga_path.exists()
    with pytest.raises((FileNotFoundError, ConnectionRefusedError)):
        await RawQMP.connect(fake_vm.qmp_path)


async def test_quit(fake_vm: FakeVM) -> None:
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        assert await qmp.execute("quit") == {}
        event = await qmp.next_event("SHUTDOWN")
        assert event["data"] == {"guest": False, "reason": "host-qmp-quit"}
        with pytest.raises(EOFError):
            await qmp.recv()
    await poll_until(lambda: not fake_vm.qmp_path.exists(), what="QEMU to exit")
    with pytest.raises((FileNotFoundError, ConnectionRefusedError)):
        await RawQMP.connect(fake_vm.qmp_path)


async def test_restart_after_stop(fake_vm_factory: Any) -> None:
    vm: FakeVM = await fake_vm_factory()
    await vm.stop()
    assert not vm.qmp_path.exists()
    await vm.start()
    async with await RawQMP.open(vm.qmp_path) as qmp:
        assert await qmp.execute("query-balloon") == {"actual": 2 * GiB}
