"""The installed ``balloonctl`` console script against the real guest, as a user runs it.

Each test gets its own state file (BALLOONCTL_STATE) and an empty config home, so nothing
from the user's environment leaks in and nothing leaks out.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from .qemu import BALLOON_QOM_PATH, MiB, QemuVM, balloonctl_path, poll_until

pytestmark = pytest.mark.realvm

VM = "realvm"


class Cli:
    """Runs balloonctl against one VM with a private state file and config home."""

    def __init__(self, vm: QemuVM, tmp: Path, *, agent: bool = True) -> None:
        self.vm = vm
        self.sockets = ["--qmp", f"{VM}={vm.qmp_path}"]
        if agent:
            self.sockets += ["--qga", str(vm.qga_path)]
        self.state = tmp / "state.json"
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("BALLOONCTL_") and k != "NO_COLOR"}
        self.env.update(BALLOONCTL_STATE=str(self.state), XDG_CONFIG_HOME=str(tmp / "config"),
                        NO_COLOR="1")

    def run(self, *args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [balloonctl_path(), *self.sockets, *args],
            capture_output=True, text=True, env=self.env, timeout=timeout,
        )

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = self.run(*args)
        assert result.returncode == 0, (
            f"balloonctl {' '.join(args)} exited {result.returncode}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}"
        )
        return result

    def json(self, *args: str) -> dict[str, Any]:
        rows = json.loads(self.ok(*args, "--json").stdout)
        assert isinstance(rows, list) and len(rows) == 1, rows
        row: dict[str, Any] = rows[0]
        assert row["name"] == VM
        return row


def actual(vm: QemuVM) -> int:
    with vm.qmp() as qmp:
        return int(qmp.command("query-balloon")["actual"])


def test_cli_status_json_shows_the_real_guest(real_vm: QemuVM, tmp_path: Path) -> None:
    cli = Cli(real_vm, tmp_path)
    # QEMU starts with stats polling off (and the fixtures leave it off): the stats are
    # frozen, so the VM is `stale` (docs/cli.md) until polling is turned on and the guest
    # pushes a fresh sample
    frozen = cli.json("status")
    assert frozen["polling_interval"] == 0 and frozen["status"] == "stale"
    cli.ok("stats", VM, "--interval", "1")
    since = int(time.time())
    row = poll_until(lambda: (r := cli.json("status"))["last_update"] > since and r,
                     timeout=30, what="a fresh stats sample from the real guest")
    assert row["status"] == "ok" and row["polling_interval"] == 1
    assert row["reachable"] is True and row["driver_ready"] is True
    assert row["actual"] == row["guest_ram"] == real_vm.ram
    assert row["ballooned"] == 0
    assert 0 < row["total_memory"] < real_vm.ram
    assert 0 < row["free_memory"] < row["total_memory"]
    assert row["last_update"] > 0
    assert row["hint_mode"] == "agent"
    assert row["deflate_on_oom"] is False


def test_cli_set_wait_inflates_then_restores(real_vm: QemuVM, tmp_path: Path) -> None:
    cli = Cli(real_vm, tmp_path)
    cli.ok("set", VM, "640M", "--wait")
    # --wait returned, so QEMU must already report the target.
    assert abs(actual(real_vm) - 640 * MiB) <= 2 * MiB
    row = cli.json("status")
    assert row["target"] == 640 * MiB
    assert abs(row["ballooned"] - (real_vm.ram - 640 * MiB)) <= 2 * MiB

    cli.ok("set", VM, "100%", "--wait")
    assert actual(real_vm) == real_vm.ram


def test_cli_refuses_a_target_above_ram(real_vm: QemuVM, tmp_path: Path) -> None:
    result = Cli(real_vm, tmp_path).run("set", VM, "2G")
    assert result.returncode == 5  # ExitCode.UNSAFE_TARGET
    assert result.stderr.startswith("balloonctl: error:")
    assert "above guest RAM" in result.stderr
    assert actual(real_vm) == real_vm.ram


def test_cli_hint_on_status_off_in_agent_mode(real_vm: QemuVM, tmp_path: Path) -> None:
    cli = Cli(real_vm, tmp_path)
    assert cli.json("hint", VM, "status")["hint_enabled"] is False
    assert "agent" in cli.ok("hint", VM, "on").stdout
    row = cli.json("hint", VM, "status")
    assert (row["hint_mode"], row["hint_enabled"]) == ("agent", True)
    # The busybox guest mounts no cgroup2 and no config allows it: drop_caches, and why.
    assert row["hint_method"] == "drop" and "cgroup2 not mounted" in row["hint_detail"]
    # Agent mode is balloonctl's own state: it must persist between invocations.
    assert json.loads(cli.state.read_text())[str(real_vm.qmp_path)]["hint"] is True
    cli.ok("hint", VM, "off")
    assert cli.json("hint", VM, "status")["hint_enabled"] is False


def test_cli_hint_without_guest_agent_is_unsupported(real_vm: QemuVM, tmp_path: Path) -> None:
    cli = Cli(real_vm, tmp_path, agent=False)
    assert cli.json("hint", VM, "status")["hint_mode"] == "unsupported"
    result = cli.run("hint", VM, "on")
    assert result.returncode == 4  # ExitCode.QMP_ERROR: HintUnsupported
    assert "reclaim-cache-first" in result.stderr


def test_cli_stats_turns_on_polling(real_vm: QemuVM, tmp_path: Path) -> None:
    Cli(real_vm, tmp_path).ok("stats", VM, "--interval", "1")
    with real_vm.qmp() as qmp:
        interval = qmp.command("qom-get", {"path": BALLOON_QOM_PATH,
                                           "property": "guest-stats-polling-interval"})
    assert interval == 1


def test_cli_reports_a_busy_socket(real_vm: QemuVM, tmp_path: Path) -> None:
    cli = Cli(real_vm, tmp_path)
    with real_vm.qmp():  # another QMP client holds the socket
        result = cli.run("--timeout", "1s", "status", "--json")
    assert result.returncode == 3  # ExitCode.UNREACHABLE
    row = json.loads(result.stdout)[0]
    assert (row["status"], row["error_kind"]) == ("busy", "SocketBusy")
    assert "another QMP client" in result.stderr


def test_cli_wave_moves_the_real_balloon_and_restores(real_vm: QemuVM, tmp_path: Path) -> None:
    cli = Cli(real_vm, tmp_path)
    result = cli.ok("wave", VM, "--min", "640M", "--max", "1G", "--period", "3s",
                    "--step", "0.5s", "--cycles", "1", "-f", "ndjson")
    steps = [json.loads(line) for line in result.stdout.splitlines()]
    targets = [s["target"] for s in steps if not s["restore"]]
    # A triangle: down from the top to --min, then back up to the top.
    low = targets.index(min(targets))
    assert targets[0] == targets[-1] == real_vm.ram
    assert min(targets) == 640 * MiB
    assert targets[: low + 1] == sorted(targets[: low + 1], reverse=True)
    assert targets[low:] == sorted(targets[low:])
    # The real guest followed: actual went well below RAM while the wave ran.
    assert min(s["actual"] for s in steps) < real_vm.ram - 128 * MiB
    # The last line restores the original target, and QEMU gets back there.
    assert steps[-1]["restore"] is True and steps[-1]["target"] == real_vm.ram
    cli.ok("set", VM, "100%", "--wait")
    assert actual(real_vm) == real_vm.ram
