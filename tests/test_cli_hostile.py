"""balloonctl as a real process against a hostile fake (``python -m balloonctl.fake --fault``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli_process import BALLOONCTL, read_lines, run

from balloonctl.cli.exitcodes import ExitCode


@pytest.fixture
def env(fake_dir: Path, tmp_path: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("_BALLOONCTL")}
    e.update({"BALLOONCTL_DIR": str(fake_dir), "BALLOONCTL_STATE": str(tmp_path / "state"),
              "BALLOONCTL_CONFIG": str(tmp_path / "absent.toml"), "BALLOONCTL_WELLKNOWN": ""})
    return e


def start_fake(fake_dir: Path, *faults: str, vms: int = 2) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "balloonctl.fake", "--vms", str(vms), "--dir", str(fake_dir),
            "--workload", "none"]
    for fault in faults:
        args += ["--fault", fault]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready = read_lines(proc.stdout, vms)
    assert len(ready) == vms, (ready, proc.stderr.read() if proc.stderr else "")
    return proc


@pytest.fixture
def fake(fake_dir: Path) -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.parametrize("fault", ["bad-reply:query-balloon", "bad-reply:qom-list",
                                   "bad-reply:qom-get:guest-stats",
                                   "bad-reply:query-memory-size-summary"])
def test_status_shows_the_vm_that_answered_nonsense_and_every_other(
    env: dict[str, str], fake_dir: Path, fake: list[subprocess.Popen[str]], fault: str,
) -> None:
    fake.append(start_fake(fake_dir, f"vm1={fault}"))
    r = run(env, "status", "--json")
    assert r.returncode == ExitCode.PARTIAL, r.stderr  # one of two VMs failed
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["vm1"]["status"] == "error" and rows["vm1"]["error_kind"] == "BadReply"
    assert rows["vm2"]["status"] == "ok" and rows["vm2"]["actual"] == 2 * 1024**3
    assert r.stderr.count("\n") == 1 and "vm1: QEMU sent a bad reply to " in r.stderr
    alone = run(env, "status", "vm1")
    assert alone.returncode == ExitCode.QMP_ERROR
    assert " error " in alone.stdout.splitlines()[1]


def test_an_unknown_fault_is_one_line(fake_dir: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "balloonctl.fake", "--dir", str(fake_dir),
                        "--fault", "bad-reply:nope"], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 2 and "unknown fault 'bad-reply:nope'" in r.stderr


def test_a_bad_guest_agent_reply_still_sets_the_target(
    env: dict[str, str], fake_dir: Path, fake: list[subprocess.Popen[str]],
) -> None:
    fake.append(start_fake(fake_dir, "vm1=bad-reply:guest-exec-status", vms=1))
    on = run(env, "hint", "vm1", "on")
    assert on.returncode == 0, on.stderr
    r = run(env, "set", "vm1", "1G", "--wait")
    assert r.returncode == 0, r.stderr
    assert "reached 1 GiB" in r.stdout
    hint = run(env, "hint", "vm1", "--json")
    detail = json.loads(hint.stdout)[0]["hint_detail"]
    # "reclaim" (main's word) unless the method is known to be drop_caches
    assert "last reclaim failed" in detail and "'out-data' is not valid base64" in detail


# ---- who holds a busy socket -----------------------------------------------------------


def test_a_socket_held_by_a_balloonctl_watch_names_it(
    env: dict[str, str], fake_dir: Path, fake: list[subprocess.Popen[str]],
) -> None:
    fake.append(start_fake(fake_dir, vms=1))
    watch = subprocess.Popen([BALLOONCTL, "watch", "vm1", "--interval", "30s"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert watch.stdout is not None
        first = read_lines(watch.stdout, 1)  # it holds the socket once it has read it
        assert first, watch.stderr.read() if watch.stderr else ""
        r = run(env, "--timeout", "0.5", "status", "vm1")
        assert r.returncode == ExitCode.UNREACHABLE
        assert r.stderr.count("\n") == 1
        assert "sent no greeting within 0.5s: it is held by another balloonctl, " in r.stderr
        assert f"pid {watch.pid} (balloonctl watch vm1" in r.stderr
        assert " busy " in r.stdout.splitlines()[1]
    finally:
        watch.terminate()
        watch.wait(timeout=20)


def test_a_socket_held_by_another_process_names_its_pid(
    env: dict[str, str], fake_dir: Path, fake: list[subprocess.Popen[str]],
) -> None:
    fake.append(start_fake(fake_dir, vms=1))
    holder = socket.socket(socket.AF_UNIX)
    holder.connect(str(fake_dir / "vm1.qmp"))
    try:
        assert b"QMP" in holder.recv(4096)  # greeted: this connection is the one served
        r = run(env, "--timeout", "0.5", "status", "vm1")
        assert r.returncode == ExitCode.UNREACHABLE
        assert f"it is held by another QMP client, pid {os.getpid()} (" in r.stderr
        assert "another balloonctl" not in r.stderr
    finally:
        holder.close()


# ---- --timeout is a budget per VM ----------------------------------------------------------


def test_timeout_cuts_off_a_vm_that_answers_each_command_just_in_time(
    env: dict[str, str], fake_dir: Path, fake: list[subprocess.Popen[str]],
) -> None:
    # With --timeout 1s each command may take up to 1 s; three take 0.8 s each.
    slow = [f"vm1=delay:{cmd}@0.8" for cmd in
            ("query-cpus-fast", "query-memory-size-summary", "query-balloon")]
    fake.append(start_fake(fake_dir, *slow))
    started = time.monotonic()
    r = run(env, "--timeout", "1s", "status", "--json")
    took = time.monotonic() - started
    assert r.returncode == ExitCode.PARTIAL, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["vm1"]["status"] == "unreachable" and rows["vm1"]["error_kind"] == "QMPTimeout"
    assert "within the overall limit of 1s for this VM (--timeout)" in rows["vm1"]["error"]
    assert rows["vm2"]["status"] == "ok"
    assert took < 1.0 + 5.0  # the budget plus the process's start-up, not 2.4 s of replies
    within = run(env, "--timeout", "4s", "status", "vm1", "--json")
    assert within.returncode == 0 and json.loads(within.stdout)[0]["status"] == "ok"
