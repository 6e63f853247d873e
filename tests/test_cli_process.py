"""The CLI as a real process: signals, stderr as a pipe, the long-running commands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from cliproc import BALLOONCTL, cli_env, run

from balloonctl.cli.exitcodes import ExitCode
from balloonctl.fake import FakeVM, run_in_thread
from balloonctl.units import GiB, MiB


@pytest.fixture
def env(fake_dir: Path, tmp_path: Path) -> dict[str, str]:
    return cli_env(fake_dir, tmp_path)


def read_lines(stream: IO[str], n: int, timeout: float = 20.0) -> list[str]:
    """The next n lines of a child's output, failing after a deadline (not a sleep)."""
    os.set_blocking(stream.fileno(), True)
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while len(lines) < n:
        assert time.monotonic() < deadline, f"only got {lines!r}"
        line = stream.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
    return lines


@pytest.fixture
def vm1(fake_dir: Path) -> Iterator[FakeVM]:
    with run_in_thread(FakeVM("vm1", fake_dir, tick=0.01, rate=4 * GiB, stats_interval=2)) as vm:
        yield vm


def test_errors_are_one_plain_line_on_a_pipe(env: dict[str, str], fake_dir: Path) -> None:
    bad = run(env, "--qmp", str(fake_dir / "nope.qmp"), "status", "nope")
    assert bad.returncode == ExitCode.UNREACHABLE
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("balloonctl: error: nope:")
    assert "\x1b" not in bad.stderr and "Traceback" not in bad.stderr
    size = run(env, "--qmp", str(fake_dir / "nope.qmp"), "set", "nope", "abc")
    assert size.returncode == ExitCode.USAGE
    assert size.stderr == (
        "balloonctl: error: invalid size 'abc': expected a positive number with an optional "
        "unit (e.g. 1073741824, 512M, 512MiB, 1.5G, 2GB)\n"
    )
    assert size.stdout == ""


def test_busy_socket_in_a_real_process_is_one_line(
    env: dict[str, str], vm1: FakeVM
) -> None:
    import socket

    holder = socket.socket(socket.AF_UNIX)
    holder.connect(str(vm1.qmp_path))
    try:
        holder.recv(4096)
        r = run(env, "--timeout", "0.3", "set", "vm1", "1G")
    finally:
        holder.close()
    assert r.returncode == ExitCode.UNREACHABLE
    assert r.stderr.count("\n") == 1 and "another QMP client" in r.stderr


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, ExitCode.INTERRUPTED),
                                         (signal.SIGTERM, ExitCode.TERMINATED)])
def test_wave_ctrl_c_or_sigterm_restores_the_original_target(
    env: dict[str, str], vm1: FakeVM, sig: signal.Signals, code: ExitCode,
) -> None:
    assert run(env, "set", "vm1", "1800M").returncode == 0
    child = subprocess.Popen(
        [BALLOONCTL, "wave", "vm1", "--min", "600M", "--max", "1400M", "--period", "4s",
         "--step", "0.2s", "-f", "ndjson"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None
        first = [json.loads(line) for line in read_lines(child.stdout, 3)]
        assert [s["target"] for s in first][:2] == [1400 * MiB, 1320 * MiB]
        child.send_signal(sig)
        rest, err = child.communicate(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == code, err
    last = json.loads(rest.splitlines()[-1])
    assert last["restore"] is True and last["target"] == 1800 * MiB
    status = json.loads(run(env, "status", "vm1", "--json").stdout)[0]
    assert status["target"] == 1800 * MiB


def test_fake_serves_until_interrupted(env: dict[str, str], fake_dir: Path) -> None:
    where = fake_dir / "fleet"  # created by the command
    child = subprocess.Popen(
        [BALLOONCTL, "fake", "--vms", "2", "--mem", "1G", "--dir", str(where)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None
        lines = read_lines(child.stdout, 2)
        assert [line.split()[0] for line in lines] == ["vm1", "vm2"]
        assert lines[0].split()[1] == f"qmp={where}/vm1.qmp"
        r = run({**env, "BALLOONCTL_DIR": str(where)}, "status", "--json")
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)
        assert [s["name"] for s in got] == ["vm1", "vm2"]
        assert all(s["guest_ram"] == GiB for s in got)
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err
    assert "Traceback" not in err


def test_fake_host_mem_simulates_a_host_read_like_a_real_one(
    env: dict[str, str], fake_dir: Path
) -> None:
    from balloonctl.host import host_root_for, read_host

    where = fake_dir / "hosted"
    child = subprocess.Popen(
        [BALLOONCTL, "fake", "--vms", "2", "--mem", "1G", "--dir", str(where),
         "--host-mem", "3G"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None
        assert len(read_lines(child.stdout, 2)) == 2
        assert host_root_for(where) == where / "host"
        host = read_host(where / "host")
        assert host.total == 3 * GiB
        assert 0 < host.available < host.total and host.ksm is not None and host.psi is not None
        r = run({**env, "BALLOONCTL_DIR": str(where)}, "status", "--json")
        assert r.returncode == 0, r.stderr
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err
    assert not (where / "host").exists()  # gone with the fleet: no stale host left behind


def test_fake_sets_up_the_fault_scenarios(env: dict[str, str], fake_dir: Path) -> None:
    where = fake_dir / "faulty"
    child = subprocess.Popen(
        [BALLOONCTL, "fake", "--vms", "3", "--mem", "1G", "--dir", str(where), "--hint-device",
         "--no-driver", "vm2", "--no-balloon", "vm3", "--no-agent"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None
        lines = read_lines(child.stdout, 3)
        assert lines[0] == f"vm1 qmp={where}/vm1.qmp"  # --no-agent: no qga=
        e = {**env, "BALLOONCTL_DIR": str(where)}
        got = {s["name"]: s for s in json.loads(run(e, "status", "--json").stdout)}
        assert got["vm1"]["hint_mode"] == "device" and got["vm1"]["status"] == "ok"
        assert got["vm2"]["status"] == "no-driver"
        assert got["vm3"]["status"] == "no-device"
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err


def test_fake_never_takes_over_a_running_fleet(env: dict[str, str], vm1: FakeVM,
                                              fake_dir: Path) -> None:
    # a separate process with a deadline: before the fix it took the sockets and served on
    r = subprocess.run([BALLOONCTL, "fake", "--vms", "1", "--dir", str(fake_dir)], env=env,
                       capture_output=True, text=True, timeout=20, check=False)
    assert r.returncode == ExitCode.USAGE
    assert r.stderr == (f"balloonctl: error: cannot serve fake VMs in {fake_dir}: "
                        f"{fake_dir}/vm1.qmp is in use (another fake or QEMU is serving it)\n")
    assert run(env, "status", "vm1").returncode == ExitCode.OK  # still the first fake's


def test_a_closed_pipe_ends_watch_quietly(env: dict[str, str], vm1: FakeVM) -> None:
    child = subprocess.Popen(
        [BALLOONCTL, "watch", "--no-events", "--interval", "0.05s"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None and child.stderr is not None
        assert json.loads(read_lines(child.stdout, 1)[0])["name"] == "vm1"
        child.stdout.close()  # as `| head -1` does
        child.wait(timeout=20)
        err = child.stderr.read()
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0 and err == ""


@pytest.mark.parametrize("args", [
    ["watch"],  # events mode: holds every VM's socket
    ["watch", "--no-events"],
    ["watch", "--format", "csv"],
    ["status", "--watch"],
])
def test_a_reader_that_goes_away_ends_the_stream_at_once(
    env: dict[str, str], vm1: FakeVM, args: list[str],
) -> None:
    """`balloonctl watch | head -1`: with a minute between rounds, the command still ends as
    soon as the reader closes the pipe (not at its next write), exit 0, nothing on stderr,
    and the VM's socket is free again."""
    child = subprocess.Popen([BALLOONCTL, *args, "--interval", "60s"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stderr is not None
        assert read_lines(child.stdout, 1)
        child.stdout.close()  # as `| head -1` does
        child.wait(timeout=15)
        err = child.stderr.read()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert (child.returncode, err) == (0, "")
    assert run(env, "status", "vm1").returncode == ExitCode.OK


@pytest.mark.parametrize(("sig", "code", "how"), [
    (signal.SIGINT, ExitCode.INTERRUPTED, "Ctrl-C"),
    (signal.SIGTERM, ExitCode.TERMINATED, "SIGTERM"),
])
def test_ctrl_c_or_sigterm_during_set_wait_says_the_target_stands(
    env: dict[str, str], fake_dir: Path, sig: signal.Signals, code: ExitCode, how: str,
) -> None:
    """`set --wait` on a slow balloon, stopped while it waits: one line per VM saying the
    target was sent and stands, exit 130 (Ctrl-C) or 143 (SIGTERM), and no traceback."""
    slow = FakeVM("vm1", fake_dir, tick=0.01, rate=8 * MiB)  # 1 GiB takes two minutes
    with run_in_thread(slow):
        child = subprocess.Popen([BALLOONCTL, "set", "vm1", "1G", "--wait", "--timeout", "5m"],
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
        try:
            journal = Path(env["BALLOONCTL_JOURNAL"])  # each test's own (conftest)
            deadline = time.monotonic() + 20
            while not (journal.exists() and '"vm":"vm1"' in journal.read_text()):
                assert time.monotonic() < deadline and child.poll() is None, "never sent"
                time.sleep(0.02)
            assert child.poll() is None  # still waiting for the balloon
            child.send_signal(sig)
            out, err = child.communicate(timeout=20)
        finally:
            if child.poll() is None:
                child.kill()
        assert child.returncode == code, err
        assert out == ""
        assert err.splitlines() == [
            f"balloonctl: error: vm1: stopped waiting ({how}): target 1 GiB was sent and "
            f"stands (actual {err.split('(actual ')[1].split(')')[0]})"
        ]
        status = json.loads(run(env, "status", "vm1", "--json").stdout)[0]
        assert status["target"] == GiB and status["actual"] > GiB


def test_a_closed_stderr_keeps_the_documented_exit_code(env: dict[str, str],
                                                         fake_dir: Path) -> None:
    """`balloonctl ... 2>&1 >/dev/null | head -0`: the error lines are lost, but the exit
    code is still the error's (2 for a bad size, 3 for a missing socket), not 1 ("a bug")."""
    cases = [(["--qmp", str(fake_dir / "nope.qmp"), "set", "nope", "abc"], ExitCode.USAGE),
             (["--qmp", str(fake_dir / "nope.qmp"), "status"], ExitCode.UNREACHABLE)]
    for args, code in cases:
        read, write = os.pipe()
        os.close(read)  # the reader is gone before anything is written
        try:
            child = subprocess.run([BALLOONCTL, *args], env=env, stdout=subprocess.DEVNULL,
                                   stderr=write, timeout=60, check=False)
        finally:
            os.close(write)
        assert child.returncode == code, args
