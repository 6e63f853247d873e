"""Fleets of fake VMs: one timer for all, in a thread, and as a separate process."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from rawqmp import RawQMP, poll_until

from balloonctl.fake import (
    SOCKET_PATH_MAX,
    FakeFleet,
    FakeVM,
    SocketInUse,
    SocketPathTooLong,
    run_fleet_forever,
    run_in_thread,
)
from balloonctl.units import GiB, MiB


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def test_fleet_names_sockets_and_seeds(fake_dir: Path) -> None:
    async with FakeFleet(3, fake_dir, ram=GiB, tick=0.01, workload="compile", seed=5) as fleet:
        assert [vm.name for vm in fleet.vms] == ["vm1", "vm2", "vm3"]
        assert fleet["vm2"].qmp_path == fake_dir / "vm2.qmp"
        assert _listing(fake_dir) == [
            "vm1.qga",
            "vm1.qmp",
            "vm2.qga",
            "vm2.qmp",
            "vm3.qga",
            "vm3.qmp",
        ]
        for vm in fleet.vms:
            async with await RawQMP.open(vm.qmp_path) as qmp:
                assert await qmp.execute("query-balloon") == {"actual": GiB}
        # The workloads run on the shared timer, differently per VM.
        await poll_until(lambda: all(vm.guest.minor_faults > 0 for vm in fleet.vms))
        assert len({vm.guest.anon for vm in fleet.vms}) > 1
    assert _listing(fake_dir) == []


async def test_fleet_prefix(fake_dir: Path) -> None:
    async with FakeFleet(2, fake_dir, prefix="web", tick=0.01) as fleet:
        assert [vm.name for vm in fleet.vms] == ["web1", "web2"]
        assert (fake_dir / "web2.qmp").exists()


async def test_a_second_fleet_never_takes_over_a_running_ones_sockets(fake_dir: Path) -> None:
    async with FakeFleet(2, fake_dir, ram=GiB, tick=0.01):
        with pytest.raises(SocketInUse, match=r"vm\d\.qmp is in use \(another fake or QEMU"):
            await FakeFleet(2, fake_dir, ram=GiB, tick=0.01).start()
        # the first fleet still serves on its own sockets
        async with await RawQMP.open(fake_dir / "vm1.qmp") as qmp:
            assert await qmp.execute("query-balloon") == {"actual": GiB}


async def test_a_stale_socket_file_is_replaced_and_other_files_are_kept(fake_dir: Path) -> None:
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(fake_dir / "vm1.qmp"))  # bound, never listening: a dead QEMU's leftover
    stale.close()
    (fake_dir / "vm2.qmp").write_text("not a socket")
    with pytest.raises(OSError, match=r"vm2\.qmp exists and is not a socket"):
        await FakeFleet(2, fake_dir, ram=GiB, tick=0.01).start()
    (fake_dir / "vm2.qmp").unlink()
    async with FakeFleet(2, fake_dir, ram=GiB, tick=0.01):
        async with await RawQMP.open(fake_dir / "vm1.qmp") as qmp:
            assert await qmp.execute("query-balloon") == {"actual": GiB}


async def test_fleet_overrides_set_up_faulty_vms(fake_dir: Path) -> None:
    overrides = {"vm2": {"driver": False}, "vm3": {"balloon": False, "agent": False}}
    async with FakeFleet(3, fake_dir, ram=GiB, tick=0.01, overrides=overrides) as fleet:
        assert fleet["vm1"].device is not None and fleet["vm1"].agent
        assert fleet["vm3"].device is None and not fleet["vm3"].agent
        assert not (fake_dir / "vm3.qga").exists()
    with pytest.raises(ValueError, match=r"no VM named vm9 in the fleet \(vm1\.\.vm3\)"):
        FakeFleet(3, fake_dir, overrides={"vm9": {"driver": False}})


async def test_two_hundred_vms_are_cheap(fake_dir: Path) -> None:
    fleet = FakeFleet(200, fake_dir, workload="compile", tick=0.05)
    async with fleet:
        # Every VM answers.
        async def one(vm: FakeVM) -> int:
            async with await RawQMP.open(vm.qmp_path) as qmp:
                await qmp.execute("balloon", {"value": GiB + 512 * MiB})
                result: int = (await qmp.execute("query-balloon"))["actual"]
                return result

        actuals = await asyncio.gather(*(one(vm) for vm in fleet.vms))
        assert all(a <= 2 * GiB for a in actuals)
        # One timer tick over the whole fleet, workloads and balloons moving, stays cheap.
        loop = asyncio.get_running_loop()
        cpu = time.process_time()
        now, wall = loop.time(), time.time()
        for _ in range(20):
            now += 0.05  # each tick a full period later: workloads step, balloons move
            wall += 0.05
            for vm in fleet.vms:
                vm.on_tick(now, wall)
        per_tick = (time.process_time() - cpu) / 20
        assert per_tick < 0.02, f"a fleet tick costs {per_tick * 1000:.1f} ms"
        await poll_until(
            lambda: all(vm.guest.actual == GiB + 512 * MiB for vm in fleet.vms), within=10
        )


def test_run_in_thread_serves_code_that_runs_its_own_loop(fake_dir: Path) -> None:
    vm = FakeVM("vm1", fake_dir, tick=0.01, rate=4 * GiB)

    async def client() -> Any:
        async with await RawQMP.open(vm.qmp_path) as qmp:
            await qmp.execute("balloon", {"value": GiB})
            await poll_until(lambda: _actual_is(qmp, GiB))
            return await qmp.execute("query-balloon")

    with run_in_thread(vm) as running:
        assert running is vm
        assert asyncio.run(client()) == {"actual": GiB}
        assert asyncio.run(client()) == {"actual": GiB}  # a second loop, same fake
    assert not vm.qmp_path.exists()


async def _actual_is(qmp: RawQMP, value: int) -> bool:
    return bool((await qmp.execute("query-balloon"))["actual"] == value)


def test_run_in_thread_with_a_fleet(fake_dir: Path) -> None:
    fleet = FakeFleet(3, fake_dir, tick=0.01)

    async def actuals() -> list[int]:
        out = []
        for vm in fleet.vms:
            async with await RawQMP.open(vm.qmp_path) as qmp:
                out.append((await qmp.execute("query-balloon"))["actual"])
        return out

    with run_in_thread(fleet):
        assert asyncio.run(actuals()) == [2 * GiB] * 3
    assert list(fake_dir.iterdir()) == []


def test_run_in_thread_reports_start_failures(fake_dir: Path) -> None:
    (fake_dir / "vm1.qmp").write_text("not a socket")  # never replaced
    with pytest.raises(OSError, match="is not a socket"), run_in_thread(FakeVM("vm1", fake_dir)):
        pass


@pytest.mark.parametrize(("name", "why"), [
    ("", "is empty"), ("a/b", "contains '/'"), ("../x", "contains '/'"),
    ("a\0b", "contains a NUL character"),
])
def test_a_vm_name_must_be_one_file_name(fake_dir: Path, name: str, why: str) -> None:
    with pytest.raises(ValueError, match=f" {why}$"):
        FakeVM(name, fake_dir / "d")
    if name:  # an empty prefix is fine: VMs 1, 2...
        with pytest.raises(ValueError, match=f" {why}$"):
            FakeFleet(1, fake_dir / "d", prefix=name)
    assert list(fake_dir.iterdir()) == []


def test_socket_paths_fit_in_sun_path_with_its_nul(fake_dir: Path) -> None:
    def where(size: int) -> Path:  # a directory whose vm1.qmp path is `size` bytes
        return fake_dir / ("d" * (size - len(f"{fake_dir}/") - len("/vm1.qmp")))

    assert SOCKET_PATH_MAX == 107
    vm = FakeVM("vm1", where(107))
    with run_in_thread(vm):
        assert vm.qmp_path.is_socket() and vm.qga_path.is_socket()
    with pytest.raises(SocketPathTooLong, match=r"vm1\.qmp is 108 bytes; .* at most 107"):
        FakeVM("vm1", where(108), agent=False)
    with pytest.raises(SocketPathTooLong, match=r"vm10\.qmp is 108 bytes"):
        FakeFleet(10, where(107))  # vm1..vm9 would fit
    assert [p.name for p in fake_dir.iterdir()] == [where(107).name]  # nothing of 108's


async def test_run_fleet_forever_prints_one_line_per_vm(fake_dir: Path) -> None:
    out = io.StringIO()
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_fleet_forever(2, GiB, fake_dir, None, out=out, stop=stop, tick=0.01)
    )
    await poll_until(lambda: out.getvalue().count("\n") == 2, what="the VM lines")
    assert out.getvalue().splitlines() == [
        f"vm1 qmp={fake_dir / 'vm1.qmp'} qga={fake_dir / 'vm1.qga'}",
        f"vm2 qmp={fake_dir / 'vm2.qmp'} qga={fake_dir / 'vm2.qga'}",
    ]
    async with await RawQMP.open(fake_dir / "vm2.qmp") as qmp:
        assert await qmp.execute("query-memory-size-summary") == {
            "base-memory": GiB,
            "plugged-memory": 0,
        }
    stop.set()
    await asyncio.wait_for(task, 5)
    assert not (fake_dir / "vm1.qmp").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_python_m_balloonctl_fake_runs_until_signalled(
    fake_dir: Path, sig: signal.Signals
) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "balloonctl.fake",
        "--vms",
        "2",
        "--mem",
        "1G",
        "--dir",
        str(fake_dir),
        "--workload",
        "idle",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        lines = [
            (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip() for _ in range(2)
        ]
        assert lines[0].startswith(f"vm1 qmp={fake_dir / 'vm1.qmp'}")
        async with await RawQMP.open(fake_dir / "vm1.qmp") as qmp:
            assert await qmp.execute("query-balloon") == {"actual": GiB}
        proc.send_signal(sig)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert not (fake_dir / "vm1.qmp").exists()


def test_the_fake_imports_no_ui_or_client_libraries() -> None:
    code = (
        "import sys, balloonctl.fake, balloonctl.fake.__main__\n"
        "heavy = ('typer', 'textual', 'httpx', 'qemu', 'starlette')\n"
        "bad = [m for m in heavy if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == ""


def test_python_m_refuses_a_bad_size() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "balloonctl.fake", "--mem", "lots"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "invalid size 'lots'" in result.stderr


async def test_fleet_fixture(fake_fleet_factory: Any) -> None:
    fleet: FakeFleet = await fake_fleet_factory(2, ram=GiB)
    async with await RawQMP.open(fleet["vm2"].qmp_path) as qmp:
        assert await qmp.execute("query-balloon") == {"actual": GiB}


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM])
def test_run_in_thread_cleans_up_when_the_terminal_closes(sig: signal.Signals) -> None:
    # Like `balloonctl demo`: a fleet in a temporary directory, then the terminal goes away.
    code = (
        "import signal, tempfile\n"
        "from pathlib import Path\n"
        "from balloonctl.fake import FakeFleet, run_in_thread\n"
        "with tempfile.TemporaryDirectory(prefix='balloonctl-demo-') as tmp:\n"
        "    with run_in_thread(FakeFleet(2, Path(tmp), workload=None)):\n"
        "        print(tmp, flush=True)\n"
        "        signal.pause()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        tmp = Path(proc.stdout.readline().strip())
        assert (tmp / "vm1.qmp").exists()
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == 128 + sig
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
    assert not tmp.exists()
