"""BalloonClient's limits at their edges, against the fake QEMU over real sockets.

Oracles: docs/cli.md (floors, --force, status words, exit codes), docs/CONTRACTS.md (the
guest agent's answer is reused for 30 s, an unreachable agent is asked at every probe) and
the docstrings of ``BalloonClient`` where the docs are silent.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from balloonctl.errors import (
    ConnectFailed,
    DriverNotReady,
    SocketBusy,
    StuckBalloon,
    UnsafeTarget,
    WaitTimeout,
)
from balloonctl.fake import FakeVM
from balloonctl.model import HintMode, VmStatus
from balloonctl.qmp import BalloonClient
from balloonctl.units import GiB, KiB, MiB

ClientFactory = Callable[..., BalloonClient]
PAGE = 4 * KiB


# --- floors and ceilings through the client: nothing unsafe reaches QEMU ---------------------


async def test_a_configured_min_below_a_tenth_of_ram_is_the_floor(
    fake_vm_factory: Any, client_for: ClientFactory,
) -> None:
    vm: FakeVM = await fake_vm_factory(ram=4 * GiB)  # default floor: 409.6 MiB
    async with client_for(vm, minimum=300 * MiB) as client:
        assert (await client.snapshot()).floor == 300 * MiB
        with pytest.raises(UnsafeTarget, match="safe floor 300 MiB"):
            await client.set_target(300 * MiB - MiB)
        assert vm.guest.balloon_target == 0  # nothing was sent
        assert await client.set_target(300 * MiB) == 300 * MiB
        assert vm.guest.balloon_target == 4 * GiB - 300 * MiB


async def test_the_default_floor_at_its_edge(
    fake_vm_factory: Any, client_for: ClientFactory,
) -> None:
    vm: FakeVM = await fake_vm_factory(ram=5000 * MiB)  # floor: 10 % = 500 MiB
    async with client_for(vm) as client:
        assert (await client.snapshot()).floor == 500 * MiB
        with pytest.raises(UnsafeTarget, match="below the safe floor 500 MiB"):
            await client.set_target(499 * MiB)
        assert vm.guest.balloon_target == 0
        assert await client.set_target(500 * MiB) == 500 * MiB
        assert await client.set_target(499 * MiB, force=True) == 499 * MiB
        with pytest.raises(UnsafeTarget, match="hard minimum"):
            await client.set_target(128 * MiB - 1, force=True)
        assert await client.set_target(128 * MiB, force=True) == 128 * MiB
        assert vm.guest.balloon_target == 5000 * MiB - 128 * MiB


async def test_a_configured_max_at_its_edge(
    fake_vm_factory: Any, client_for: ClientFactory,
) -> None:
    vm: FakeVM = await fake_vm_factory(ram=4 * GiB)
    async with client_for(vm, maximum=3 * GiB) as client:
        assert await client.set_target(2 * GiB) == 2 * GiB
        with pytest.raises(UnsafeTarget, match="above the VM's maximum"):
            await client.set_target(3 * GiB + MiB)
        with pytest.raises(UnsafeTarget, match="above the VM's maximum"):
            await client.set_target(3 * GiB + 1, force=True)
        assert vm.guest.balloon_target == 2 * GiB  # the refused ones were never sent
        assert await client.set_target(3 * GiB) == 3 * GiB


# --- converging: 2 MiB of tolerance, then one page more -------------------------------------


def _park_balloon(vm: FakeVM, actual: int) -> None:
    """Put the (stuck) balloon where ``actual`` says, as a guest that stopped short would."""
    vm.guest.set_target(actual)
    while vm.guest.step_balloon(GiB):
        pass
    assert vm.guest.actual == actual


async def test_actual_2_mib_off_the_target_has_converged(
    fake_vm: FakeVM, client_for: ClientFactory,
) -> None:
    fake_vm.faults.stuck = True
    async with client_for(fake_vm) as client:
        await client.set_target(GiB)
        _park_balloon(fake_vm, GiB + 2 * MiB)
        state = await client.snapshot()
        assert (state.target, state.status) == (GiB, VmStatus.OK)
        assert await client.wait_for_target(GiB, timeout=5, stall_timeout=5) == GiB + 2 * MiB


async def test_actual_a_page_more_than_2_mib_off_is_still_converging(
    fake_vm: FakeVM, client_for: ClientFactory,
) -> None:
    fake_vm.faults.stuck = True
    async with client_for(fake_vm) as client:
        await client.set_target(GiB)
        _park_balloon(fake_vm, GiB + 2 * MiB + PAGE)
        state = await client.snapshot()
        assert (state.target, state.status) == (GiB, VmStatus.CONVERGING)
        with pytest.raises(StuckBalloon):
            await client.wait_for_target(GiB, timeout=10, stall_timeout=0.2)


# --- set --wait: stall, timeout and a guest without the driver --------------------------------


async def test_a_stuck_balloon_is_reported_after_the_stall_timeout_not_before(
    fake_vm: FakeVM, client_for: ClientFactory,
) -> None:
    fake_vm.faults.stuck = True
    async with client_for(fake_vm) as client:
        await client.set_target(GiB)
        polls: list[float] = []
        started = time.monotonic()
        with pytest.raises(StuckBalloon) as err:
            await client.wait_for_target(GiB, timeout=30, stall_timeout=1.0,
                                         progress=lambda a, t: polls.append(time.monotonic()))
        elapsed = time.monotonic() - started
        assert elapsed >= 1.0  # not before the stall timeout
        assert elapsed < 15  # and long before the 30 s wait timeout
        assert len(polls) >= 3  # it kept looking meanwhile
        assert err.value.actual == 2 * GiB and err.value.target == GiB
        assert "no movement for 1s" in str(err.value)


async def test_a_moving_balloon_is_not_stuck_but_times_out_at_the_deadline(
    fake_vm_factory: Any, client_for: ClientFactory,
) -> None:
    vm: FakeVM = await fake_vm_factory(rate=64 * MiB)  # 1 GiB takes 16 s
    async with client_for(vm) as client:
        await client.set_target(GiB)
        started = time.monotonic()
        with pytest.raises(WaitTimeout) as err:
            await client.wait_for_target(GiB, timeout=1.0, stall_timeout=0.9)
        elapsed = time.monotonic() - started
        assert not isinstance(err.value, StuckBalloon)  # it moved within every 0.9 s
        assert 1.0 <= elapsed < 6
        assert "within 1s" in str(err.value)
        assert err.value.actual is not None and GiB < err.value.actual < 2 * GiB


async def test_a_guest_without_the_driver_is_not_a_stuck_balloon(
    fake_vm_factory: Any, client_for: ClientFactory,
) -> None:
    vm: FakeVM = await fake_vm_factory(driver=False)
    async with client_for(vm) as client:
        await client.set_target(GiB)
        started = time.monotonic()
        with pytest.raises(DriverNotReady, match="virtio_balloon"):
            await client.wait_for_target(GiB, timeout=30, stall_timeout=0.5)
        assert 0.5 <= time.monotonic() - started < 15


# --- busy sockets: the two diagnoses (docs/cli.md: busy with another QMP client) ---------------


@dataclass
class FullListener:
    """A unix socket whose listen queue is full: nobody accepts, one client waits."""

    path: Path
    server: socket.socket


@pytest.fixture
def full_listener(fake_dir: Path) -> Iterator[FullListener]:
    path = fake_dir / "full.qmp"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(0)
    waiting: list[socket.socket] = []
    try:
        while True:
            s = socket.socket(socket.AF_UNIX)
            s.setblocking(False)
            try:
                s.connect(str(path))
            except BlockingIOError:
                s.close()
                break
            waiting.append(s)
        assert waiting  # the queue holds at least one
        yield FullListener(path, server)
    finally:
        for s in waiting:
            s.close()
        server.close()


async def test_a_full_listen_queue_is_busy_and_says_nothing_was_accepted(
    full_listener: FullListener,
) -> None:
    client = BalloonClient(str(full_listener.path), name="vm1", connect_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(SocketBusy) as err:
        await client.connect()
    assert time.monotonic() - started >= 0.5  # it waited for a place in the queue
    message = str(err.value)
    assert "did not accept the connection within 0.5s" in message
    assert "listen queue is full" in message
    assert "accepted the connection" not in message
    state = await client.snapshot()
    assert state.status is VmStatus.BUSY and "did not accept" in (state.error or "")


async def test_a_socket_that_accepts_but_never_greets_is_busy_and_says_it_accepted(
    fake_vm: FakeVM, client_for: ClientFactory,
) -> None:
    fake_vm.faults.never_greet = True
    client = client_for(fake_vm, connect_timeout=0.3)
    with pytest.raises(SocketBusy) as err:
        await client.connect()
    assert "accepted the connection but sent no greeting within 0.3s" in str(err.value)
    assert "another QMP client" in str(err.value)


async def test_a_queue_that_frees_up_within_the_timeout_gets_in(
    full_listener: FullListener,
) -> None:
    taken: list[socket.socket] = []
    # The server takes the waiting client off the queue while balloonctl waits; balloonctl
    # then gets in, and hears no greeting, as from a QMP socket libvirt holds.
    asyncio.get_running_loop().call_later(
        0.2, lambda: taken.append(full_listener.server.accept()[0]))
    client = BalloonClient(str(full_listener.path), connect_timeout=1.5)
    try:
        with pytest.raises(SocketBusy, match="accepted the connection but sent no greeting"):
            await client.connect()
        assert taken
    finally:
        for s in taken:
            s.close()


async def test_a_socket_nobody_listens_on_is_refused_not_busy(fake_dir: Path) -> None:
    path = fake_dir / "dead.qmp"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        with pytest.raises(ConnectFailed, match="refused") as err:
            await BalloonClient(str(path), connect_timeout=0.5).connect()
    assert not isinstance(err.value, SocketBusy)


# --- the guest agent: an answer is kept 30 s, a failure is not --------------------------------


async def test_a_failed_agent_probe_is_retried_at_the_next_call(
    fake_vm: FakeVM, client_for: ClientFactory,
) -> None:
    async with client_for(fake_vm, agent=True) as client:
        fake_vm.faults.drop_on.add("guest-info")  # the agent hangs up on the probe
        first = await client.hint_status()
        assert first.mode is HintMode.UNSUPPORTED and "unreachable" in first.detail
        fake_vm.faults.drop_on.clear()
        second = await client.hint_status()  # at once, not 30 s later
        assert second.mode is HintMode.AGENT


async def test_an_agent_answer_is_reused_but_set_hint_asks_afresh(
    fake_vm: FakeVM, client_for: ClientFactory,
) -> None:
    async with client_for(fake_vm, agent=True) as client:
        assert (await client.hint_status()).mode is HintMode.AGENT
        fake_vm.faults.drop_on.add("guest-info")
        # within AGENT_RECHECK the answer stands: no probe, so the fault is not seen
        assert (await client.hint_status()).mode is HintMode.AGENT
        with pytest.raises(Exception, match="unreachable"):
            await client.set_hint(True)  # set_hint probes afresh
