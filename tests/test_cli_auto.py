"""``plan``, ``auto``, ``history`` and ``undo`` (and the journaling of ``set`` and ``wave``) as
real processes against a fake fleet on a simulated host: output, journal, exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from balloonctl.cli.exitcodes import ExitCode
from balloonctl.fake import FakeFleet, run_in_thread
from balloonctl.fake.guest import GuestSim
from balloonctl.host import host_root_for, read_host
from balloonctl.journal import Origin, read_journal
from balloonctl.units import GiB, MiB, format_size
from tests.test_cli_process import BALLOONCTL, read_lines

RAM = 2 * GiB


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    return tmp_path / "journal.jsonl"


@pytest.fixture
def env(fake_dir: Path, tmp_path: Path, journal: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("_BALLOONCTL")}
    config = tmp_path / "config.toml"
    # cycles of a second; the PSI averages of the simulated host lag: watch memory alone
    config.write_text('[policy]\ncycle = "1s"\nmax_step = "512M"\npsi_threshold = "99%"\n')
    e.update({"BALLOONCTL_DIR": str(fake_dir), "BALLOONCTL_STATE": str(tmp_path / "state"),
              "BALLOONCTL_CONFIG": str(config), "BALLOONCTL_WELLKNOWN": "",
              "BALLOONCTL_JOURNAL": str(journal)})
    return e


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BALLOONCTL, *args], env=env, capture_output=True, text=True,
                          timeout=90, check=False)


@pytest.fixture
def fleet(fake_dir: Path) -> Iterator[FakeFleet]:
    # the guests report every second, as QEMU started with guest-stats-polling-interval:
    # `plan` sends nothing, so it never turns polling on (docs/policy.md), and a VM whose
    # polling is off is stale and left alone
    fake = FakeFleet(2, fake_dir, ram=RAM, host_mem=3 * GiB,
                     host={"ksm_run": False, "ksm_fraction": 0.0}, tick=0.01, rate=4 * GiB,
                     stats_interval=1)
    with run_in_thread(fake):
        yield fake


def on_loop(fleet: FakeFleet, fn: Any, *args: Any) -> None:
    """Run ``fn(*args)`` on the fleet's loop and wait for it."""
    done = threading.Event()

    def call() -> None:
        try:
            fn(*args)
        finally:
            done.set()

    fleet.vms[0].call_threadsafe(call)
    assert done.wait(5)


def squeeze(fleet: FakeFleet, fake_dir: Path) -> None:
    """The guests touch memory and free it: the host holds it, the guests have it free."""
    def touch(guest: GuestSim) -> None:
        guest.release_anon(guest.alloc(1200 * MiB))

    for vm in fleet.vms:
        on_loop(fleet, touch, vm.guest)
    deadline = time.monotonic() + 5
    while read_host(host_root_for(fake_dir)).available_fraction >= 0.15:
        assert time.monotonic() < deadline, "no host pressure"
        time.sleep(0.02)


def entries(journal: Path) -> list[Any]:
    read = read_journal(journal)
    assert not read.warnings
    return list(read.entries)


def test_plan_shows_decisions_and_sends_nothing(
    env: dict[str, str], fleet: FakeFleet, fake_dir: Path, journal: Path,
) -> None:
    squeeze(fleet, fake_dir)
    r = run(env, "plan")
    assert r.returncode == ExitCode.OK, r.stderr
    host, header, *rows = r.stdout.splitlines()
    assert host.startswith("host 3 GiB, available ") and "guests 4 GiB (1.33x)" in host
    assert header.split() == ["NAME", "ACTION", "ACTUAL", "TARGET", "REASON"]
    assert [row.split()[:2] for row in rows] == [["vm1", "shrink"], ["vm2", "shrink"]]
    assert all("< 15 %: reclaim " in row for row in rows)
    data = json.loads(run(env, "plan", "--json").stdout)
    assert [(d["name"], d["action"], d["current"]) for d in data] == [
        ("vm1", "shrink", RAM), ("vm2", "shrink", RAM)]
    assert all(d["target"] < RAM for d in data)
    assert all(vm.guest.actual == RAM for vm in fleet.vms)  # applied to nothing
    assert not journal.exists()
    assert run(env, "plan", "nope").returncode == ExitCode.USAGE


def test_plan_leaves_a_vm_whose_polling_is_off_and_does_not_turn_it_on(
    env: dict[str, str], fake_dir: Path, journal: Path,
) -> None:
    # docs/policy.md: `plan` sends nothing, not even the polling interval; QEMU's default
    # (polling off) freezes the stats, so the VM is stale and left alone, saying so
    fake = FakeFleet(2, fake_dir, ram=RAM, host_mem=3 * GiB,
                     host={"ksm_run": False, "ksm_fraction": 0.0}, tick=0.01, rate=4 * GiB,
                     overrides={"vm1": {"stats_interval": 1}})
    with run_in_thread(fake):
        squeeze(fake, fake_dir)
        r = run(env, "plan")
        assert r.returncode == ExitCode.OK, r.stderr
        _host, _header, *rows = r.stdout.splitlines()
        assert [row.split()[:2] for row in rows] == [["vm1", "shrink"], ["vm2", "leave"]]
        assert rows[1].endswith("left alone: stats are stale (stats polling is off)")
        assert [vm.device.polling_interval for vm in fake.vms if vm.device] == [1, 0]
    assert not journal.exists()


def test_auto_applies_journals_and_history_shows_it(
    env: dict[str, str], fleet: FakeFleet, fake_dir: Path, journal: Path,
) -> None:
    squeeze(fleet, fake_dir)
    r = run(env, "auto", "--cycles", "2", "--interval", "1s")
    assert r.returncode == ExitCode.OK, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) >= 2 and all(" (shrink): host available " in line for line in lines)
    assert "vm1: 2 GiB -> " in r.stdout and "vm2: 2 GiB -> " in r.stdout
    assert r.stderr.splitlines()[-1] == (
        "balloonctl: auto stopped after 2 cycles; balloon targets stay where they are")
    changes = entries(journal)
    assert {e.origin for e in changes} == {Origin.AUTO} and len(changes) == len(lines)
    assert all(vm.guest.balloon_target > 0 for vm in fleet.vms)

    h = run(env, "history", "--since", "1h")
    assert h.returncode == ExitCode.OK
    header, *rows = h.stdout.splitlines()
    assert header.split() == ["TIME", "VM", "CHANGE", "ORIGIN", "REASON"]
    assert len(rows) == len(changes) and all(" auto (pid " in row for row in rows)
    only = json.loads(run(env, "history", "vm2", "--json").stdout)
    assert only and {e["vm"] for e in only} == {"vm2"}
    assert all(e["origin"]["command"] == "auto" for e in only)
    assert run(env, "history", "--since", "0s").returncode == ExitCode.USAGE  # zero: nothing
    assert run(env, "history", "--since", "soon").returncode == ExitCode.USAGE
    assert json.loads(run(env, "history", "ghost*", "--json").stdout) == []


def test_auto_stops_on_sigterm_and_leaves_targets_where_they_are(
    env: dict[str, str], fleet: FakeFleet, fake_dir: Path, journal: Path,
) -> None:
    squeeze(fleet, fake_dir)
    proc = subprocess.Popen([BALLOONCTL, "auto", "--interval", "1s"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        first = read_lines(proc.stdout, 1)  # a change: the first cycle ran
        assert first and " (shrink): " in first[0]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == ExitCode.TERMINATED
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "auto stopped (SIGTERM) after " in err and "targets stay where they are" in err
    assert "Traceback" not in err
    # nothing was set back: the targets auto sent stand, and the journal says so
    last = {e.vm: e.target for e in entries(journal)}
    for vm in fleet.vms:
        assert RAM - vm.guest.balloon_target == last[vm.name]


def test_auto_refuses_an_unwritable_journal_before_sending(
    env: dict[str, str], fleet: FakeFleet, fake_dir: Path, tmp_path: Path,
) -> None:
    squeeze(fleet, fake_dir)
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    r = run({**env, "BALLOONCTL_JOURNAL": str(blocked)}, "auto", "--cycles", "1")
    assert r.returncode == ExitCode.JOURNAL
    assert r.stderr.startswith(f"balloonctl: error: journal {blocked}: cannot write: ")
    assert all(vm.guest.balloon_target == 0 for vm in fleet.vms)
    s = run({**env, "BALLOONCTL_JOURNAL": str(blocked)}, "set", "vm1", "1G")
    assert s.returncode == ExitCode.JOURNAL and fleet.vms[0].guest.balloon_target == 0
    # --journal (a global option, given after the command too) wins over the environment
    ok = run({**env, "BALLOONCTL_JOURNAL": str(blocked)}, "set", "vm1", "1G",
             "--journal", str(tmp_path / "j2.jsonl"))
    assert ok.returncode == ExitCode.OK, ok.stderr
    assert [e.origin for e in entries(tmp_path / "j2.jsonl")] == [Origin.SET]


def test_set_journals_and_undo_takes_it_back(
    env: dict[str, str], fleet: FakeFleet, journal: Path,
) -> None:
    assert run(env, "set", "vm1", "1G").returncode == ExitCode.OK
    assert run(env, "set", "vm1", "1.5G").returncode == ExitCode.OK
    sets = entries(journal)
    assert [(e.origin, e.previous, e.target, e.reason) for e in sets] == [
        (Origin.SET, RAM, GiB, "set to 1G"), (Origin.SET, GiB, 1536 * MiB, "set to 1.5G")]
    u = run(env, "undo", "vm1", "--steps", "2")
    assert u.returncode == ExitCode.OK, u.stderr
    assert u.stdout.startswith("vm1: 1.5 GiB -> 2 GiB: undo 2 changes: ")
    assert fleet.vms[0].guest.balloon_target == 0  # back at guest RAM
    last = entries(journal)[-1]
    assert last.origin is Origin.UNDO and set(last.undoes) == {e.id for e in sets}
    again = run(env, "undo", "vm1")
    assert again.returncode == ExitCode.USAGE
    assert "vm1: nothing to undo: nothing left to undo" in again.stderr
    assert run(env, "undo", "ghost").returncode == ExitCode.USAGE


def test_undo_stops_at_a_foreign_move_and_journals_it(
    env: dict[str, str], fleet: FakeFleet, journal: Path,
) -> None:
    assert run(env, "set", "vm1", "1.5G", "--wait").returncode == ExitCode.OK
    assert run(env, "status", "vm1", "--json").returncode == ExitCode.OK  # seen reached
    # another QMP client moves the balloon behind balloonctl's back
    vm1 = fleet.vms[0]
    on_loop(fleet, vm1.guest.set_target, GiB)
    deadline = time.monotonic() + 5
    while vm1.guest.actual != GiB:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    u = run(env, "undo", "vm1")
    assert u.returncode == ExitCode.FAILURE
    assert "moved by another writer" in u.stderr and "use set" in u.stderr
    assert vm1.guest.actual == GiB  # not overridden
    last = entries(journal)[-1]
    assert (last.origin, last.previous, last.target) == (Origin.FOREIGN, 1536 * MiB, GiB)
    status = json.loads(run(env, "status", "vm1", "--json").stdout)[0]
    assert status["owner"] == "foreign" and status["target"] is None


def test_wave_journals_every_target_it_sets(
    env: dict[str, str], fleet: FakeFleet, journal: Path,
) -> None:
    r = run(env, "wave", "vm1", "--min", "1G", "--max", "1.5G", "--period", "2s",
            "--step", "1s", "--cycles", "1", "--speed", "10")
    assert r.returncode == ExitCode.OK, r.stderr
    waves = entries(journal)
    assert waves and {e.origin for e in waves} == {Origin.WAVE}
    assert waves[-1].target == RAM  # the original target set again, journaled too
    assert waves[0].reason == "wave between 1G and 1.5G, period 2s"


def test_status_host_flag(env: dict[str, str], fleet: FakeFleet) -> None:
    plain = json.loads(run(env, "status", "--json").stdout)
    assert isinstance(plain, list)  # unchanged without --host
    data = json.loads(run(env, "status", "--host-memory", "--json").stdout)
    assert set(data) == {"host", "vms"} and len(data["vms"]) == 2
    assert data["host"]["total"] == 3 * GiB and data["host"]["guest_ram"] == 4 * GiB
    assert data["host"]["overcommit"] == pytest.approx(4 / 3, abs=0.001)
    table = run(env, "status", "--host-memory").stdout.splitlines()
    assert table[0].startswith("host 3 GiB, available ") and table[1].startswith("NAME")
    assert run(env, "status", "--host-memory", "-f", "csv").returncode == ExitCode.USAGE


def test_auto_leaves_a_foreign_vm_alone_until_reclaim_takes_it_back(
    env: dict[str, str], fleet: FakeFleet, fake_dir: Path, journal: Path,
) -> None:
    """docs/cli.md: a VM moved by another writer is left alone by `auto` (journaled once as
    foreign) until `--reclaim VM` takes it back; --reclaim of a VM auto does not manage is a
    usage error."""
    assert run(env, "set", "vm1", "1.5G", "--wait").returncode == ExitCode.OK
    assert run(env, "status", "vm1", "--json").returncode == ExitCode.OK  # seen reached
    vm1 = fleet.vms[0]
    on_loop(fleet, vm1.guest.set_target, 1792 * MiB)  # another QMP client moves it
    deadline = time.monotonic() + 5
    while vm1.guest.actual != 1792 * MiB:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    squeeze(fleet, fake_dir)  # host pressure: auto would shrink every VM it manages
    # two cycles: a foreign move is journaled once it has stood still for a cycle
    left = run(env, "auto", "--cycles", "2")
    assert left.returncode == ExitCode.OK, left.stderr
    changed = [line.split()[1].rstrip(":") for line in left.stdout.splitlines()
               if "(shrink)" in line]  # "12:00:01  vm2: 2 GiB -> 1.6 GiB (shrink): ..."
    assert "vm2" in changed and "vm1" not in changed, left.stdout
    moved = f"vm1: moved by another writer (1.5 GiB -> {format_size(1792 * MiB)}): left alone "
    assert left.stdout.count(moved + "until reclaimed") == 1, left.stdout
    assert RAM - vm1.guest.balloon_target == 1792 * MiB  # its target untouched
    foreign = [e for e in entries(journal) if e.origin is Origin.FOREIGN]
    assert [(e.vm, e.target) for e in foreign] == [("vm1", 1792 * MiB)]
    assert run(env, "auto", "--cycles", "1", "--reclaim", "ghost").returncode == ExitCode.USAGE
    out = run(env, "auto", "vm2", "--cycles", "1", "--reclaim", "vm1")
    assert out.returncode == ExitCode.USAGE and "not among the VMs auto manages" in out.stderr
    back = run(env, "auto", "--cycles", "1", "--reclaim", "vm1", "--reclaim", "vm2")
    assert back.returncode == ExitCode.OK, back.stderr
    lines = back.stdout.splitlines()
    assert "vm1: taken back from another writer" in lines
    assert "vm2: was not marked as moved by another writer" in lines
    status = json.loads(run(env, "status", "vm1", "--json").stdout)[0]
    assert status["owner"] != "foreign"
    plan = json.loads(run(env, "plan", "vm1", "--json").stdout)[0]
    assert "another writer" not in plan["reason"], plan  # the policy manages it again


def test_auto_hold_keeps_every_socket_for_the_run(env: dict[str, str], fleet: FakeFleet) -> None:
    """`auto --hold` keeps the VMs' QMP sockets open (docs/cli.md): meanwhile another QMP
    client finds them busy, held by that balloonctl process (its PID named)."""
    child = subprocess.Popen([BALLOONCTL, "auto", "--hold", "--interval", "1s",
                              "--duration", "60s"], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            states = json.loads(run(env, "status", "--json").stdout)
            if all(s["status"] == "busy" for s in states):
                break
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, states
            time.sleep(0.1)  # polling a condition, with a deadline
        assert [s["name"] for s in states] == ["vm1", "vm2"]
        holder = f"held by another balloonctl, pid {child.pid} (balloonctl auto --hold"
        assert all(holder in s["error"] for s in states), [s["error"] for s in states]
    finally:
        child.send_signal(signal.SIGINT)
        child.communicate(timeout=30)
    assert child.returncode == ExitCode.INTERRUPTED
    after = json.loads(run(env, "status", "--json").stdout)
    assert [s["status"] for s in after] == ["ok", "ok"]  # released when it ends
