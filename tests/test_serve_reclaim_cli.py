"""``balloonctl auto --reclaim VM`` while ``balloonctl serve`` holds the sockets (real
processes over a fake fleet): the service takes the VM back (its auto manages it) and the
CLI exits instead of starting a second auto; a service without auto refuses with its error
(docs/cli.md)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_cli_process import BALLOONCTL
from test_serve_process import cli, env, stop, wait_for_socket  # noqa: F401 - env: fixture

from balloonctl.cli.exitcodes import ExitCode
from balloonctl.fake import FakeFleet, run_in_thread
from balloonctl.units import GiB

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def fleet(fake_dir: Path) -> Iterator[FakeFleet]:
    with run_in_thread(FakeFleet(2, fake_dir, tick=0.01, rate=4 * GiB, ram=2 * GiB,
                                 host_mem=8 * GiB)) as f:
        yield f


def serving(environ: dict[str, str], *flags: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([BALLOONCTL, "serve", "--interval", "0.2s", *flags], env=environ,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_socket(Path(environ["BALLOONCTL_SERVE_SOCKET"]), proc)
    return proc


def vm2(environ: dict[str, str]) -> dict[str, Any]:
    """vm2 as ``status --json`` shows it (through the service)."""
    done = cli(environ, "status", "--json", "vm2")
    assert done.returncode == 0, done.stderr
    state: dict[str, Any] = json.loads(done.stdout)[0]
    return state


def until(check: Callable[[], bool], what: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"


def test_auto_reclaim_goes_through_the_local_service(
        fleet: FakeFleet, env: dict[str, str]) -> None:  # noqa: F811 - the fixture
    proc = serving(env)  # auto wired (off): the service's controller takes VMs back
    try:
        done = cli(env, "set", "vm2", "1.5G", "--wait", "--timeout", "20s")
        assert done.returncode == 0, done.stderr
        until(lambda: vm2(env)["owner"] == "balloonctl", "vm2 balloonctl's")
        vm = fleet["vm2"]
        assert vm.device is not None
        vm.call_threadsafe(vm.device.set_target, GiB)  # another writer moves the balloon
        until(lambda: vm2(env)["owner"] == "foreign", "vm2 foreign")

        taken = cli(env, "auto", "--reclaim", "vm2")
        assert (taken.returncode, taken.stdout) == (0, "vm2: taken back from another writer\n")
        assert "balloonctl serve runs auto for these VMs" in taken.stderr
        assert vm2(env)["owner"] is None  # the mark is gone; nothing was sent
        again = cli(env, "auto", "--reclaim", "vm2")
        assert (again.returncode, again.stdout) == (
            0, "vm2: was not marked as moved by another writer\n")
        unknown = cli(env, "auto", "--reclaim", "vm9")
        assert unknown.returncode == ExitCode.USAGE, unknown.stderr
        assert unknown.stdout == "" and "vm9" in unknown.stderr
        assert unknown.stderr.count("\n") == 1 and "Traceback" not in unknown.stderr
        journal = [json.loads(line) for line in
                   Path(env["BALLOONCTL_JOURNAL"]).read_text().splitlines()]
        assert [e["origin"]["command"] for e in journal] == ["set"]  # reclaim journals nothing
    finally:
        stop(proc)


def test_auto_reclaim_under_a_service_without_auto_is_its_error(
        fleet: FakeFleet, env: dict[str, str]) -> None:  # noqa: F811 - the fixture
    proc = serving(env, "--no-auto")
    try:
        refused = cli(env, "auto", "--reclaim", "vm1")
        assert (refused.returncode, refused.stdout) == (ExitCode.FAILURE, "")
        assert "auto is not available here" in refused.stderr
        assert refused.stderr.startswith("balloonctl: error: vm1: ")
        assert "no second auto" not in refused.stderr
    finally:
        stop(proc)
