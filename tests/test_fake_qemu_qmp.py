"""The fake speaks well enough for qemu.qmp's QMPClient, the library balloonctl builds on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from qemu.qmp import ConnectError, ExecuteError, QMPClient, StateError
from rawqmp import RawQMP, poll_until

from balloonctl.fake import FakeVM
from balloonctl.units import GiB, MiB

BALLOON = "/machine/peripheral/balloon0"


@contextlib.asynccontextmanager
async def _client(vm: FakeVM) -> AsyncIterator[QMPClient]:
    qmp = QMPClient(vm.name)
    await asyncio.wait_for(qmp.connect(str(vm.qmp_path)), 3)
    try:
        yield qmp
    finally:
        with contextlib.suppress(Exception):
            await qmp.disconnect()


async def test_connect_negotiates_and_executes(fake_vm: FakeVM) -> None:
    async with _client(fake_vm) as qmp:
        assert qmp.greeting is not None
        version: Any = qmp.greeting.QMP.version
        assert version["qemu"]["major"] == 7
        assert await qmp.execute("query-balloon") == {"actual": 2 * GiB}
        stats: Any = await qmp.execute("qom-get", {"path": BALLOON, "property": "guest-stats"})
        assert stats["last-update"] > 0


async def test_concurrent_executes(fake_vm: FakeVM) -> None:
    async with _client(fake_vm) as qmp:
        results = await asyncio.gather(
            *(qmp.execute("query-balloon") for _ in range(20)),
            qmp.execute("query-memory-size-summary"),
        )
    assert results[:20] == [{"actual": 2 * GiB}] * 20
    assert results[20] == {"base-memory": 2 * GiB, "plugged-memory": 0}


@pytest.mark.parametrize(
    ("cmd", "args", "error_class", "desc"),
    [
        ("no-such", None, "CommandNotFound", "The command no-such has not been found"),
        ("balloon", {"value": 0}, "GenericError", "Parameter 'target' expects a size"),
        (
            "qom-get",
            {"path": "/machine/peripheral/nope", "property": "guest-stats"},
            "DeviceNotFound",
            "Device '/machine/peripheral/nope' not found",
        ),
    ],
)
async def test_errors_arrive_as_execute_errors(
    fake_vm: FakeVM, cmd: str, args: dict[str, Any] | None, error_class: str, desc: str
) -> None:
    async with _client(fake_vm) as qmp:
        with pytest.raises(ExecuteError) as err:
            await qmp.execute(cmd, args)
        assert err.value.error_class == error_class
        assert str(err.value) == desc
        # The connection survives an error.
        assert await qmp.execute("query-balloon") == {"actual": 2 * GiB}


async def test_no_balloon_device(fake_vm_factory: Any) -> None:
    vm = await fake_vm_factory(balloon=False)
    async with _client(vm) as qmp:
        with pytest.raises(ExecuteError) as err:
            await qmp.execute("query-balloon")
    assert err.value.error_class == "DeviceNotActive"


async def test_balloon_change_events(fake_vm_factory: Any) -> None:
    vm = await fake_vm_factory(rate=1024 * MiB)
    async with _client(vm) as qmp:
        with qmp.listener() as listener:
            await qmp.execute("balloon", {"value": GiB + 512 * MiB})
            event: Any = await asyncio.wait_for(listener.get(), 3)
            assert event["event"] == "BALLOON_CHANGE"
            assert event["data"]["actual"] < 2 * GiB
            while event["data"]["actual"] != GiB + 512 * MiB:
                event = await asyncio.wait_for(listener.get(), 3)


async def test_busy_socket_hangs_connect_until_the_holder_leaves(fake_vm: FakeVM) -> None:
    holder = await RawQMP.open(fake_vm.qmp_path)
    waiter = QMPClient("waiter")
    try:
        connecting = asyncio.ensure_future(waiter.connect(str(fake_vm.qmp_path)))
        done, _ = await asyncio.wait({connecting}, timeout=0.3)
        assert not done  # connected at the socket level, but no greeting
        await holder.close()
        await asyncio.wait_for(connecting, 3)
        assert await waiter.execute("query-balloon") == {"actual": 2 * GiB}
    finally:
        await holder.close()
        with contextlib.suppress(Exception):
            await waiter.disconnect()


async def test_never_greet_connect_can_be_cancelled(fake_vm: FakeVM) -> None:
    fake_vm.faults.never_greet = True
    qmp = QMPClient("t")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(qmp.connect(str(fake_vm.qmp_path)), 0.3)


async def test_drop_leaves_the_client_disconnecting(fake_vm: FakeVM) -> None:
    fake_vm.faults.drop_on.add("query-balloon")
    qmp = QMPClient("t")
    await asyncio.wait_for(qmp.connect(str(fake_vm.qmp_path)), 3)
    with pytest.raises(Exception) as err:
        await qmp.execute("query-balloon")
    assert type(err.value).__name__ in ("ExecInterruptedError", "StateError", "EOFError")
    with contextlib.suppress(Exception):
        await qmp.disconnect()
    # Same object reconnects once the fault is gone.
    fake_vm.faults.drop_on.clear()
    await asyncio.wait_for(qmp.connect(str(fake_vm.qmp_path)), 3)
    assert await qmp.execute("query-balloon") == {"actual": 2 * GiB}
    await qmp.disconnect()


async def test_shutdown_event_then_gone(fake_vm: FakeVM) -> None:
    qmp = QMPClient("t")
    await asyncio.wait_for(qmp.connect(str(fake_vm.qmp_path)), 3)
    with qmp.listener() as listener:
        await fake_vm.shutdown()
        event = await asyncio.wait_for(listener.get(), 3)
    assert event["event"] == "SHUTDOWN"
    await poll_until(lambda: qmp.runstate.name != "RUNNING", what="the client to notice")
    with pytest.raises((StateError, Exception)):
        await qmp.execute("query-balloon")
    with contextlib.suppress(Exception):
        await qmp.disconnect()
    with pytest.raises(ConnectError) as err:
        await asyncio.wait_for(qmp.connect(str(fake_vm.qmp_path)), 3)
    assert isinstance(err.value.exc, FileNotFoundError | ConnectionRefusedError)
