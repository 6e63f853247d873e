"""BalloonClient against the fake QEMU through real unix sockets: connecting, busy sockets,
drops, garbage, slow replies, QMP errors, tracing and bounded event buffers."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rawqmp import RawQMP, poll_until

from balloonctl.errors import (
    ConnectFailed,
    Disconnected,
    NoBalloonDevice,
    QMPCommandError,
    QMPTimeout,
    SocketBusy,
)
from balloonctl.fake import FakeVM
from balloonctl.model import VmRef, VmStatus
from balloonctl.qmp import BalloonClient, BalloonEvent
from balloonctl.units import GiB, MiB

ClientFactory = Callable[..., BalloonClient]


async def test_connects_and_reads_the_balloon(fake_vm: FakeVM, client_for: ClientFactory) -> None:
    async with client_for(fake_vm) as client:
        assert client.connected
        assert await client.device_path() == "/machine/peripheral/balloon0"
        assert await client.query_actual() == 2 * GiB
        assert await client.guest_ram() == 2 * GiB
    assert not client.connected


async def test_connects_lazily_on_first_command(fake_vm: FakeVM, client_for: ClientFactory) -> None:
    client = client_for(fake_vm)
    assert not client.connected
    assert await client.query_actual() == 2 * GiB
    assert client.connected
    await client.close()
    await client.close()  # idempotent


async def test_from_ref_takes_name_sockets_and_limits(fake_vm: FakeVM) -> None:
    ref = VmRef(name="web", qmp=str(fake_vm.qmp_path), qga=str(fake_vm.qga_path),
                minimum=512 * MiB, maximum=GiB)
    client = BalloonClient.from_ref(ref, connect_timeout=1.0)
    assert (client.name, client.qga, client.minimum, client.maximum) == (
        "web", str(fake_vm.qga_path), 512 * MiB, GiB)
    state = await client.snapshot()
    assert state.name == "web" and state.reachable and state.floor == 512 * MiB
    assert state.maximum == GiB
    await client.close()


async def test_finds_a_balloon_without_an_id(
    fake_vm_factory: Any, client_for: ClientFactory,
) -> None:
    vm = await fake_vm_factory(device_id=None)
    async with client_for(vm) as client:
        path = await client.device_path()
        assert path.startswith("/machine/peripheral-anon/device[")
        assert (await client.stats()).reported


async def test_missing_socket_is_connect_failed(fake_dir: Path) -> None:
    client = BalloonClient(str(fake_dir / "nope.qmp"), connect_timeout=1.0)
    with pytest.raises(ConnectFailed) as err:
        await client.connect()
    assert not isinstance(err.value, SocketBusy)
    assert "no such socket" in str(err.value)


async def test_refused_socket_is_connect_failed(fake_dir: Path) -> None:
    path = fake_dir / "dead.qmp"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))  # bound, never listening: what a crashed QEMU leaves behind
        with pytest.raises(ConnectFailed, match="refused"):
            await BalloonClient(str(path), connect_timeout=1.0).connect()


async def test_never_greeting_server_is_socket_busy_within_the_timeout(
    fake_vm: FakeVM, client_for: ClientFactory,
) -> None:
    fake_vm.faults.never_greet = True
    client = client_for(fake_vm, connect_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(SocketBusy) as err:
        await client.connect()
    elapsed = time.monotonic() - started
    # not before the timeout; the upper bound only needs to be certain on a busy machine
    # (the message names the 0.3 s that applied)
    assert 0.25 <= elapsed < 5
    assert "no greeting within 0.3s" in str(err.value)
    assert "another QMP client" in str(err.value)
    # The same client recovers once the socket is free again.
    fake_vm.faults.never_greet = False
    assert await client.query_actual() == 2 * GiB
    await client.close()


async def test_a_server_that_greets_but_never_negotiates_is_a_timeout_not_busy(
    fake_vm: FakeVM, client_for: ClientFactory,
) -> None:
    """The greeting came, the answer to qmp_capabilities did not: QEMU is slow or hung, which
    is a timeout (exit 6), not "another client holds the socket" (that one never greets)."""
    fake_vm.faults.delay["qmp_capabilities"] = 1.5
    client = client_for(fake_vm, connect_timeout=0.3)
    with pytest.raises(QMPTimeout) as err:
        await client.connect()
    assert not isinstance(err.value, ConnectFailed)
    assert "greeted but did not answer qmp_capabilities within 0.3s" in str(err.value)
    assert "another QMP client" not in str(err.value)
    await client.close()
    # A client that once heard a greeting and later meets a silent socket reports it busy.
    # (The fake, like QEMU, serves the next client once the delayed session has ended.)
    fake_vm.faults.delay.clear()
    other = client_for(fake_vm, connect_timeout=10)
    assert await other.query_actual() == 2 * GiB
    await other.close()
    fake_vm.faults.never_greet = True
    other.session.connect_timeout = 0.3
    with pytest.raises(SocketBusy):
        await other.connect()
    fake_vm.faults.never_greet = False
    await other.close()


async def test_peer_leaving_during_negotiation_is_connect_failed(
    fake_vm: FakeVM, client_for: ClientFactory,
) -> None:
    fake_vm.faults.drop_on.add("qmp_capabilities")
    client = client_for(fake_vm)
    with pytest.raises(ConnectFailed, match="during the QMP handshake"):
        await client.connect()
    fake_vm.faults.drop_on.clear()
    assert await client.query_actual() == 2 * GiB
    await client.close()


async def test_qemu_qmp_assertion_on_connect_is_connect_failed(
    fake_vm: FakeVM, monkeypatch: pytest.MonkeyPatch, client_for: ClientFactory,
) -> None:
    """qemu.qmp 0.0.6 can raise a bare AssertionError from connect() when the peer answers
    the negotiation and closes at once; it is a connect failure like any other."""
    from qemu.qmp import QMPClient

    real_connect = QMPClient.connect

    async def connect_then_assert(self: QMPClient, address: Any, ssl: Any = None) -> None:
        await real_connect(self, address)
        raise AssertionError

    monkeypatch.setattr(QMPClient, "connect", connect_then_assert)
    client = client_for(fake_vm)
    with pytest.raises(ConnectFailed, match="during the QMP handshake"):
        await client.connect()
    assert not client.connected
    monkeypatch.undo()
    # The half-open session was torn down: the socket is free and the client reconnects.
    assert await client.query_actual() == 2 * GiB
    await client.close()


async def test_second_client_is_busy_until_the_first_leaves(
    fake_vm: FakeVM, client_for: ClientFactory,
) -> None:
    first = client_for(fake_vm)
    await first.connect()
    second = client_for(fake_vm, connect_timeout=0.3)
    with pytest.raises(SocketBusy):
        await second.query_actual()
    snap = await second.snapshot()
    assert not snap.reachable and snap.error_kind == "SocketBusy"
    assert snap.status is VmStatus.BUSY
    await first.close()
    assert await second.query_actual() == 2 * GiB
    await second.close()


async def test_drop_mid_command_is_disconnected_then_the_next_call_reconnects(
    fake_vm: FakeVM, client_for: ClientFactory,
) -> None:
    async with client_for(fake_vm) as client:
        fake_vm.faults.drop_on.add("query-balloon")
        with pytest.raises(Disconnected) as err:
            await client.query_actual()
        assert "lost during query-balloon" in str(err.value)
        assert err.value.vm == "vm1"
        fake_vm.faults.drop_on.clear()
        assert await client.query_actual() == 2 * GiB
        assert client.connected


async def test_vm_shutdown_is_disconnected_and_reconnect_fails_cleanly(
    fake_vm: FakeVM, client_for: ClientFactory,
) -> None:
    async with client_for(fake_vm) as client:
        await fake_vm.shutdown()
        with pytest.raises((Disconnected, ConnectFailed)):
            await poll_until(lambda: not client.connected, within=2, what="peer close")
            await client.query_actual()
        with pytest.raises(ConnectFailed):
            await client.query_actual()


async def test_garbage_reply_is_disconnected_then_recovers(
    fake_vm: FakeVM, client_for: ClientFactory,
) -> None:
    async with client_for(fake_vm) as client:
        fake_vm.faults.garbage_on.add("query-balloon")
        with pytest.raises(Disconnected) as err:
            await client.query_actual()
        assert "query-balloon" in str(err.value)
        fake_vm.faults.garbage_on.clear()
        assert await client.query_actual() == 2 * GiB


async def test_slow_reply_is_qmp_timeout(fake_vm: FakeVM, client_for: ClientFactory) -> None:
    async with client_for(fake_vm, command_timeout=0.2) as client:
        await client.query_actual()
        fake_vm.faults.delay["query-balloon"] = 20.0  # far beyond the bound's slack
        started = time.monotonic()
        with pytest.raises(QMPTimeout, match=r"did not answer query-balloon within 0\.2s"):
            await client.query_actual()
        assert time.monotonic() - started < 10


async def test_qmp_errors_keep_what_was_sent_and_received(
    fake_vm: FakeVM, client_for: ClientFactory,
) -> None:
    async with client_for(fake_vm) as client:
        with pytest.raises(QMPCommandError) as err:
            await client.execute("qom-get", {"path": "/machine/peripheral/nope",
                                             "property": "guest-stats"})
        e = err.value
        assert e.error_class == "DeviceNotFound"
        assert e.sent["execute"] == "qom-get"
        assert e.sent["arguments"]["path"] == "/machine/peripheral/nope"
        assert e.received["error"]["desc"] == "Device '/machine/peripheral/nope' not found"
        assert "Device '/machine/peripheral/nope' not found" in str(e)

        fake_vm.faults.errors["query-balloon"] = ("GenericError", "boom")
        with pytest.raises(QMPCommandError, match="boom") as err2:
            await client.query_actual()
        assert not isinstance(err2.value, NoBalloonDevice)
        fake_vm.faults.errors.clear()
        # An error reply leaves the connection usable.
        assert await client.query_actual() == 2 * GiB


async def test_unknown_command_is_command_not_found(
    fake_vm: FakeVM, client_for: ClientFactory,
) -> None:
    async with client_for(fake_vm) as client:
        with pytest.raises(QMPCommandError) as err:
            await client.execute("no-such-command")
        assert err.value.error_class == "CommandNotFound"


async def test_vm_without_balloon_device(fake_vm_factory: Any, client_for: ClientFactory) -> None:
    vm = await fake_vm_factory(balloon=False)
    async with client_for(vm) as client:
        with pytest.raises(NoBalloonDevice) as err:
            await client.device_path()
        assert "start QEMU with -device virtio-balloon-pci,id=balloon0" in str(err.value)
        with pytest.raises(NoBalloonDevice) as err2:
            await client.query_actual()  # QEMU's DeviceNotActive, translated
        assert err2.value.error_class == "DeviceNotActive"
        assert err2.value.received["error"]["class"] == "DeviceNotActive"
        with pytest.raises(NoBalloonDevice):
            await client.set_target(GiB)
        state = await client.snapshot()
    assert state.reachable and not state.has_device
    assert state.status is VmStatus.NO_DEVICE
    assert state.error_kind == "NoBalloonDevice"


async def test_trace_sees_every_message(fake_vm: FakeVM, client_for: ClientFactory) -> None:
    seen: list[tuple[str, str, Any]] = []
    async with client_for(fake_vm, trace=lambda *m: seen.append(m)) as client:
        await client.query_actual()
    names = [m[0] for m in seen]
    assert set(names) == {"vm1"}
    sent = [m[2] for m in seen if m[1] == "->"]
    received = [m[2] for m in seen if m[1] == "<-"]
    assert [m["execute"] for m in sent] == ["qmp_capabilities", "query-balloon"]
    assert "QMP" in received[0]  # the greeting
    assert received[-1]["return"] == {"actual": 2 * GiB}


async def test_events_arrive_and_end_with_disconnected(
    fake_vm: FakeVM, client_for: ClientFactory,
) -> None:
    async with client_for(fake_vm) as client:
        got: list[BalloonEvent] = []

        async def consume() -> None:
            async for ev in client.events():
                got.append(ev)

        task = asyncio.create_task(consume())
        await poll_until(lambda: len(client.session._qmp._listeners) >= 2, within=2,
                         what="listener")
        await client.set_target(GiB)
        await poll_until(lambda: any(e.name == "BALLOON_CHANGE" for e in got), within=3,
                         what="BALLOON_CHANGE")
        change = next(e for e in got if e.name == "BALLOON_CHANGE")
        assert change.data["actual"] < 2 * GiB
        assert abs(change.timestamp - time.time()) < 5
        await fake_vm.shutdown()
        with pytest.raises(Disconnected):
            await asyncio.wait_for(task, 3)
        assert got[-1].name == "SHUTDOWN"


async def test_event_stream_ends_quietly_when_the_client_closes(
    fake_vm: FakeVM, client_for: ClientFactory,
) -> None:
    client = client_for(fake_vm)
    stream = client.events()

    async def first() -> BalloonEvent:
        return await anext(stream)

    waiting = asyncio.create_task(first())
    await poll_until(lambda: len(client.session._qmp._listeners) >= 2, within=2, what="listener")
    await client.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, 2)


async def test_event_buffers_stay_bounded(fake_vm: FakeVM, client_for: ClientFactory) -> None:
    """qemu.qmp keeps every event forever by default; ours keep a bounded number."""
    async with client_for(fake_vm) as client:
        qmp = client.session._qmp
        for i in range(2000):
            fake_vm.qmp.send_event({"event": "BALLOON_CHANGE", "data": {"actual": i},
                                    "timestamp": {"seconds": 1, "microseconds": 0}})
        await client.query_actual()  # the reply comes after every event on the stream
        for listener in qmp._listeners:
            assert len(listener.history) <= 256
            assert listener._queue.qsize() <= 256
        assert len(qmp.events.history) <= 16
        last = qmp.events.history[-1]["data"]
        assert isinstance(last, dict) and last["actual"] == 1999


async def test_raw_client_gets_in_after_close(fake_vm: FakeVM, client_for: ClientFactory) -> None:
    async with client_for(fake_vm) as client:
        await client.query_actual()
    async with await RawQMP.open(fake_vm.qmp_path, reply_timeout=1.0) as raw:
        assert (await raw.execute("query-balloon"))["actual"] == 2 * GiB


@pytest.mark.parametrize(("address", "parsed"), [
    ("/run/vm1.qmp", "/run/vm1.qmp"),
    ("vm1.qmp", "vm1.qmp"),
    ("localhost:4444", ("localhost", 4444)),
    ("[::1]:4444", ("::1", 4444)),
    ("/run/odd:name", "/run/odd:name"),
    ("host:notaport", "host:notaport"),
])
def test_addresses_are_unix_paths_or_host_port(address: str, parsed: object) -> None:
    from balloonctl.qmpsession import parse_address

    assert parse_address(address) == parsed


async def test_greeted_but_no_capabilities_answer_is_not_busy(
    fake_vm: FakeVM, client_for: Any,
) -> None:
    from balloonctl.errors import QMPTimeout, SocketBusy

    fake_vm.faults.delay["qmp_capabilities"] = 5.0
    client = client_for(fake_vm, connect_timeout=0.3)
    with pytest.raises(QMPTimeout) as err:
        await client.connect()
    assert not isinstance(err.value, SocketBusy)
    assert "greeted but did not answer qmp_capabilities within 0.3s" in str(err.value)
    assert "no other client holds the socket" in str(err.value)
