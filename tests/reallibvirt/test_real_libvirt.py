"""The installed ``balloonctl`` against a TCG domain under a real libvirtd, as an operator on
a libvirt host runs it: ``--libvirt qemu:///system``, checked against libvirt's own answers.

Each test gets its own balloonctl state file and no config.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from realvm.qemu import GuestImage, balloonctl_path, poll_until

from .conftest import URI, Domain, MiB, start_domain

pytestmark = pytest.mark.reallibvirt


class Cli:
    def __init__(self, tmp: Path) -> None:
        self.env = {**os.environ, "BALLOONCTL_STATE": str(tmp / "state.json"),
                    "BALLOONCTL_CONFIG": str(tmp / "absent.toml"),
                    "BALLOONCTL_WELLKNOWN": ""}
        self.env.pop("BALLOONCTL_DIR", None)
        self.argv = [balloonctl_path(), "--libvirt", URI]

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.argv, *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def ok(self, *args: str) -> str:
        done = self.run(*args)
        assert done.returncode == 0, f"{args}: exit {done.returncode}: {done.stderr}"
        return done.stdout

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([*self.argv, *args], env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def state(self, vm: str) -> dict[str, Any]:
        states = json.loads(self.ok("status", vm, "--json"))
        assert [s["name"] for s in states] == [vm]
        found: dict[str, Any] = states[0]
        return found


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


def test_status_lists_the_domain_with_libvirts_numbers(lv_domain: Domain, cli: Cli) -> None:
    table = cli.ok("status")
    header, *rows = table.splitlines()
    assert header.split()[:3] == ["NAME", "STATE", "ACTUAL"]
    row = next(r.split() for r in rows if r.split()[0] == lv_domain.name)
    assert row[1] == "ok" and row[2] == "1G" and row[3] == "1G"

    def same_sample() -> tuple[dict[str, Any], dict[str, int]] | None:
        state = cli.state(lv_domain.name)
        raw = lv_domain.stats()
        return (state, raw) if state["last_update"] == raw["last_update"] else None

    state, raw = poll_until(same_sample, timeout=30, what="status and libvirt on one sample")
    assert state["status"] == "ok" and state["reachable"] and state["driver_ready"]
    assert state["qmp"] == f"{URI}#{lv_domain.name}"
    assert state["actual"] == raw["actual"] * 1024 == lv_domain.ram
    assert state["guest_ram"] == lv_domain.ram
    assert state["free_memory"] == raw["unused"] * 1024
    assert state["disk_caches"] == raw["disk_caches"] * 1024
    assert state["available_memory"] == raw["usable"] * 1024
    assert state["total_memory"] == raw["available"] * 1024
    assert state["polling_interval"] == 2
    assert state["hint_mode"] == "agent"  # the guest agent answers through libvirt


def test_set_wait_converges_and_libvirt_agrees(lv_domain: Domain, cli: Cli) -> None:
    out = cli.ok("set", lv_domain.name, "600M", "--wait")
    assert out.startswith(f"{lv_domain.name}: reached 600 MiB (target 600 MiB)")
    assert abs(lv_domain.actual() - 600 * MiB) <= 2 * MiB
    # libvirt's own view stays right: the live <currentMemory> follows (libvirt updates it
    # from QEMU's BALLOON_CHANGE, which QEMU sends at most once a second)
    poll_until(lambda: abs(lv_domain.live_current_memory() - 600 * MiB) <= 2 * MiB,
               timeout=10, what="libvirt's <currentMemory> at 600 MiB")
    state = cli.state(lv_domain.name)
    assert state["target"] == 600 * MiB and state["status"] == "ok"
    # one step past the floor (256 MiB for 1 GiB) is refused before anything is sent
    refused = cli.run("set", lv_domain.name, "255M")
    assert refused.returncode == 5 and "below the safe floor" in refused.stderr
    assert abs(lv_domain.actual() - 600 * MiB) <= 2 * MiB


def test_virsh_setmem_by_someone_else_is_a_foreign_write(lv_domain: Domain, cli: Cli) -> None:
    cli.ok("set", lv_domain.name, "700M", "--wait")
    assert cli.state(lv_domain.name)["target"] == 700 * MiB
    subprocess.run(["virsh", "-c", URI, "setmem", lv_domain.name, "800M", "--live"],
                   check=True, capture_output=True, timeout=30)
    poll_until(lambda: abs(lv_domain.actual() - 800 * MiB) <= 2 * MiB, timeout=60,
               what="the foreign target")
    state = cli.state(lv_domain.name)
    assert state["actual"] == lv_domain.actual()
    assert state["target"] is None  # balloonctl's 700M no longer stands
    # a relative target now counts from actual, not from the forgotten 700M
    out = cli.ok("set", lv_domain.name, "-100M", "--dry-run")
    assert "700 MiB" in out and f"{700 * MiB}" in out


def test_hint_in_agent_mode_reclaims_page_cache(lv_domain: Domain, cli: Cli) -> None:
    on = json.loads(cli.ok("hint", lv_domain.name, "on", "--json"))
    assert on[0]["hint_mode"] == "agent" and on[0]["hint_enabled"] is True
    # the reclaim script ran through libvirt's guest agent and found its method
    assert on[0]["hint_method"] in ("reclaim", "drop"), on[0]["hint_detail"]
    assert lv_domain.guest_exec(["/bin/sh", "-c", "cat /data/big.bin > /dev/null"]) == 0
    read_at = time.time()
    # the first sample the guest pushed after the read finished (last_update: whole seconds)
    sample = poll_until(lambda: (s := lv_domain.stats())["last_update"] > read_at + 1 and s,
                        timeout=30, what="a stats sample after the read")
    cached = sample["disk_caches"] * 1024
    assert cached > 150 * MiB
    cli.ok("set", lv_domain.name, "600M", "--wait")
    set_at = time.time()
    status = json.loads(cli.ok("hint", lv_domain.name, "--json"))[0]
    released = status["hint_released"]
    print(f"\nhint through libvirt: cache {cached / MiB:.0f} MiB, released "
          f"{released / MiB:.0f} MiB", file=sys.stderr)
    assert released >= 150 * MiB and released <= cached
    # actual is live (query-balloon) but disk_caches is the guest's last sample: wait for
    # the first sample pushed after the set finished, not one from before the reclaim
    after = poll_until(lambda: (s := lv_domain.stats()) and s["actual"] * 1024 <= 602 * MiB
                       and s["last_update"] > set_at + 1 and s, timeout=30,
                       what="actual at 600 MiB and a stats sample after the set")
    assert after["disk_caches"] * 1024 < cached - 150 * MiB
    cli.ok("hint", lv_domain.name, "off")


def read_events(proc: subprocess.Popen[str], want: str, timeout: float,
                which: Callable[[dict[str, Any]], bool] = lambda _: True,
                ) -> list[dict[str, Any]]:
    """NDJSON lines of ``proc`` until an event named ``want`` for which ``which`` holds."""
    assert proc.stdout is not None
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not sel.select(left):
                continue
            line = proc.stdout.readline()
            if not line:
                break
            record = json.loads(line)
            seen.append(record)
            if record.get("event") == want and which(record):
                return seen
    raise AssertionError(f"no {want} event within {timeout:g}s; saw {seen}")


def test_watch_sees_balloon_change(lv_domain: Domain, cli: Cli) -> None:
    proc = cli.popen("watch", lv_domain.name, "--interval", "5s")
    try:
        read_events(proc, "CONNECTED", 30)
        subprocess.run(["virsh", "-c", URI, "setmem", lv_domain.name, "900M", "--live"],
                       check=True, capture_output=True, timeout=30)
        # (a late BALLOON_CHANGE of an earlier deflation back to full RAM may come first)
        seen = read_events(proc, "BALLOON_CHANGE", 30,
                           lambda r: r["data"]["actual"] < lv_domain.ram)
        change = seen[-1]
        assert change["name"] == lv_domain.name
        assert 900 * MiB <= change["data"]["actual"] < lv_domain.ram
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_domain_destroyed_mid_command(lv_guest_image: GuestImage, cli: Cli) -> None:
    dom = start_domain(lv_guest_image, "doomed")
    try:
        # -v traces every libvirt call on stderr: the domain is destroyed right after the
        # target was sent, while `set --wait` polls (inflating 768 MiB takes over a second)
        proc = cli.popen("-v", "set", dom.name, "256M", "--wait", "--timeout", "60s")
        assert proc.stderr is not None
        trace: list[str] = []
        for line in proc.stderr:
            trace.append(line)
            if '"libvirt":"setMemoryFlags","result"' in line:
                break
        else:
            raise AssertionError(f"the target was never sent: {''.join(trace)}")
        dom.dom.destroy()
        _, rest = proc.communicate(timeout=60)
    finally:
        dom.destroy()
    assert proc.returncode == 3, rest
    errors = [line for line in rest.splitlines() if line.startswith("balloonctl: error:")]
    assert len(errors) == 1, rest
    assert errors[0].startswith(f"balloonctl: error: {dom.name}: domain '{dom.name}' is not "
                                f"running at {URI}")


def test_libvirtd_not_there(cli: Cli, tmp_path: Path, libvirt_ready: None) -> None:
    uri = f"qemu+unix:///system?socket={tmp_path}/no-libvirt-sock"
    done = subprocess.run([balloonctl_path(), "--libvirt", uri, "status"], env=cli.env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert done.stderr.startswith(f"balloonctl: error: cannot open libvirt connection {uri}: ")
    assert done.stderr.strip().endswith("(is libvirtd running?)")


async def test_the_dashboard_lists_the_domain_with_libvirts_numbers(lv_domain: Domain,
                                                                    tmp_path: Path) -> None:
    """The dashboard over a Fleet of the libvirt inventory: the fleet reaches the domain
    with a LibvirtClient (a QMP client could not: libvirt holds the monitor)."""
    from balloonctl.config import Inventory
    from balloonctl.fleet import Fleet
    from balloonctl.libvirt.client import LibvirtClient
    from balloonctl.units import format_size_aligned
    from tui.app import DashboardApp
    from tui.testing import wait_until

    inventory = Inventory.load(libvirt=[URI], roots=[],
                               env={"BALLOONCTL_CONFIG": str(tmp_path / "absent.toml")})
    ref = inventory.get(lv_domain.name)
    assert ref.backend == "libvirt" and ref.qmp == f"{URI}#{lv_domain.name}"
    fleet = Fleet([ref], connect_timeout=10.0, command_timeout=20.0)
    assert isinstance(fleet.client(lv_domain.name), LibvirtClient)
    app = DashboardApp(fleet, interval=0.5, meminfo=None, close_source=True)
    async with app.run_test(size=(160, 40)) as pilot:
        await wait_until(pilot, lambda: app.polls >= 1, what="the first snapshot",
                         within=60)
        table = app.main.table

        def cell(column: str) -> str:
            value = table.get_cell(lv_domain.name, column)
            return value if isinstance(value, str) else value.plain

        assert cell("state") == "ok"
        assert cell("actual") == format_size_aligned(lv_domain.actual())
        assert cell("ram") == format_size_aligned(lv_domain.ram)
