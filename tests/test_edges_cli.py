"""Documented CLI options at their edges: wave's default step and clock speed, dashboard's
--hold/--polite, status's converging and stale words (docs/cli.md)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cliproc import cli_env, on_vm_loop, run

from balloonctl.fake import FakeVM, run_in_thread
from balloonctl.units import GiB, MiB

# Stats polling on (every 2 s, as tests/conftest.py's fakes): with it off a VM is `stale`.
FAST: dict[str, Any] = {"tick": 0.01, "rate": 4 * GiB, "stats_interval": 2}


@pytest.fixture
def env(fake_dir: Path, tmp_path: Path) -> dict[str, str]:
    return cli_env(fake_dir, tmp_path)


@pytest.fixture
def vm1(fake_dir: Path) -> Iterator[FakeVM]:
    with run_in_thread(FakeVM("vm1", fake_dir, **FAST)) as vm:
        yield vm


def steps(r: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


# --- wave ------------------------------------------------------------------------------------


def test_wave_steps_every_twentieth_of_the_period_by_default(env: dict[str, str],
                                                             vm1: FakeVM) -> None:
    *wave, restore = steps(run(env, "wave", "vm1", "--min", "1G", "--max", "1.5G",
                               "--period", "4s", "--cycles", "1", "--speed", "40",
                               "-f", "ndjson"))
    assert [s["t"] for s in wave] == [round(i * 0.2, 3) for i in range(21)]  # 4 s / 20
    assert restore["restore"] is True


def test_wave_step_of_exactly_half_the_period_is_allowed(env: dict[str, str],
                                                         vm1: FakeVM) -> None:
    *wave, _ = steps(run(env, "wave", "vm1", "--min", "1G", "--max", "1.5G", "--period",
                         "2s", "--step", "1s", "--cycles", "1", "--speed", "40",
                         "-f", "ndjson"))
    assert [(s["t"], s["target"]) for s in wave] == [
        (0, 1536 * MiB), (1, 1024 * MiB), (2, 1536 * MiB)]
    r = run(env, "wave", "vm1", "--min", "1G", "--max", "1.5G", "--period", "2s",
            "--step", "1001ms", "--cycles", "1", "--speed", "40")
    assert r.returncode == 2 and "at most half of --period" in r.stderr


def test_wave_runs_at_the_clock_speed_asked_for(env: dict[str, str], vm1: FakeVM) -> None:
    started = time.monotonic()
    *wave, _ = steps(run(env, "wave", "vm1", "--min", "1G", "--max", "1.5G", "--period",
                         "20s", "--cycles", "1", "--speed", "20", "-f", "ndjson"))
    elapsed = time.monotonic() - started
    assert wave[-1]["t"] == 20
    # 20 s of wave time at 20x is 1 s of real time: never less, and far from 20 s
    assert 1.0 <= elapsed < 10, elapsed


# --- dashboard: --hold keeps the sockets, --polite (the default) does not -------------------


@pytest.mark.parametrize(("args", "hold"), [
    ([], False), (["--polite"], False), (["--hold"], True), (["--hold", "--polite"], False),
])
@pytest.mark.parametrize("command", ["dashboard", "top"])
def test_dashboard_hold_or_polite(env: dict[str, str], vm1: FakeVM, monkeypatch: Any,
                                  command: str, args: list[str], hold: bool) -> None:
    import tui.app
    from balloonctl.__main__ import main

    seen: dict[str, Any] = {}

    def fake_run(source: Any, **opts: Any) -> None:
        seen.update(source=source, opts=opts)

    monkeypatch.setattr(tui.app, "run_dashboard", fake_run)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, "argv", ["balloonctl", command, *args, "--interval", "3s",
                                      "--step", "64M"])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 0
    assert seen["source"].hold is hold
    assert list(seen["source"].names) == ["vm1"]
    opts = dict(seen["opts"])
    auto, host_root = opts.pop("auto"), opts.pop("host_root")
    assert opts == {"interval": 3.0, "step": 64 * MiB}
    # automatic ballooning is planned over the same fleet, off until A switches it on
    assert auto.fleet is seen["source"] and auto.enabled == set()
    assert host_root == Path("/")


# --- status words end to end -----------------------------------------------------------------


def test_status_shows_converging_until_within_2_mib(env: dict[str, str], vm1: FakeVM) -> None:
    on_vm_loop(vm1, lambda: setattr(vm1.faults, "stuck", True))
    assert run(env, "set", "vm1", "1G").returncode == 0

    def park(actual: int) -> None:
        def move() -> None:
            vm1.guest.set_target(actual)
            while vm1.guest.step_balloon(GiB):
                pass

        on_vm_loop(vm1, move)

    park(GiB + 2 * MiB + 4096)
    state = json.loads(run(env, "status", "--json").stdout)[0]
    assert (state["target"], state["status"]) == (GiB, "converging")
    park(GiB + 2 * MiB)
    state = json.loads(run(env, "status", "--json").stdout)[0]
    assert (state["target"], state["status"]) == (GiB, "ok")


def test_status_exit_code_counts_busy_and_unreachable(env: dict[str, str], vm1: FakeVM,
                                                      fake_dir: Path) -> None:
    r = run(env, "--qmp", f"gone={fake_dir}/gone.qmp", "status", "--json")
    assert r.returncode == 7  # one of two failed: PARTIAL
    got = {s["name"]: s["status"] for s in json.loads(r.stdout)}
    assert got == {"vm1": "ok", "gone": "unreachable"}  # the table still shows both
