"""``plan`` and ``auto`` against the real guest: one cycle moves its balloon, the journal
shows it, and ``undo`` takes it back.

This machine's host has memory to spare, so the config asks for more than it has (keep 99 %
of host RAM available): the host is short, and the policy reclaims one step from the guest.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from balloonctl.journal import Origin, read_journal

from .qemu import MiB, QemuVM
from .test_real_cli import VM, Cli, actual

pytestmark = pytest.mark.realvm

CONFIG = """
[policy]
target_available = 0.99
hysteresis = 0.005
max_step = "128M"
cycle = "1s"
"""


def test_one_auto_cycle_moves_the_real_guest_and_the_journal_shows_it(
    real_vm: QemuVM, tmp_path: Path,
) -> None:
    cli = Cli(real_vm, tmp_path)
    (tmp_path / "config" / "balloonctl").mkdir(parents=True)
    (tmp_path / "config" / "balloonctl" / "config.toml").write_text(CONFIG)
    journal = tmp_path / "journal.jsonl"
    cli.ok("stats", VM, "--interval", "1")
    since = int(time.time())
    deadline = time.monotonic() + 30
    while cli.json("status")["last_update"] <= since:  # a fresh report: stats not stale
        assert time.monotonic() < deadline, "no fresh stats from the real guest"
        time.sleep(0.2)

    plan = json.loads(cli.ok("plan", "--json").stdout)
    assert [(p["name"], p["action"], p["current"]) for p in plan] == [
        (VM, "shrink", real_vm.ram)]
    assert plan[0]["target"] == real_vm.ram - 128 * MiB
    assert "host available " in plan[0]["reason"] and "< 99 %" in plan[0]["reason"]
    assert actual(real_vm) == real_vm.ram  # plan sent nothing

    run = cli.ok("--journal", str(journal), "auto", "--cycles", "1")
    assert f"{VM}: 1 GiB -> 896 MiB (shrink): host available " in run.stdout
    deadline = time.monotonic() + 30
    while actual(real_vm) != real_vm.ram - 128 * MiB:
        assert time.monotonic() < deadline, f"the balloon stayed at {actual(real_vm)}"
        time.sleep(0.1)
    entries = read_journal(journal).entries
    assert [(e.vm, e.origin, e.previous, e.target) for e in entries] == [
        (VM, Origin.AUTO, real_vm.ram, real_vm.ram - 128 * MiB)]
    assert entries[0].reason == plan[0]["reason"] or "< 99 %" in entries[0].reason
    history = cli.ok("--journal", str(journal), "history").stdout
    assert "1 GiB -> 896 MiB" in history and " auto (pid " in history

    undo = cli.ok("--journal", str(journal), "undo", VM)
    assert undo.stdout.startswith(f"{VM}: 896 MiB -> 1 GiB: undo 1 change: ")
    deadline = time.monotonic() + 30
    while actual(real_vm) != real_vm.ram:
        assert time.monotonic() < deadline, "undo did not give the memory back"
        time.sleep(0.1)
    assert read_journal(journal).entries[-1].origin is Origin.UNDO
