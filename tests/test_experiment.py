"""The RFC's experiments on the simulator: the direction of the results, the JSON scripts
read, the chart, and one-line errors for bad options.

The oracles come from the RFC (Balbir Singh, "Linux/Guest cooperative unmapped page cache
control"): with the cache-first hint each guest kept more free memory and less page cache,
kernbench's run time did not change significantly (223.9 s vs 225.5 s), and the host's
anonymous memory was lower. The fake fleet runs on simulated time (``SimClock``), far
faster than real time, so each experiment below takes a few seconds.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from balloonctl.cli.app import app
from balloonctl.cli.exitcodes import ExitCode
from balloonctl.experiment import (
    OVERCOMMIT_SIM,
    ExperimentResult,
    PolicyControl,
    RunResult,
    SimSetup,
    run_experiment,
    sim_benches,
)
from balloonctl.fake.guest import GuestSim
from balloonctl.fake.simclock import SimClock
from balloonctl.policy import PolicySettings
from balloonctl.units import GiB, MiB

Cli = Callable[..., Result]

# Short runs: a 20 s wave period so that a 30 s build sees one and a half cycles.
FAST_WAVE = ("--work", "30s", "--period", "20s", "--speed", "40")
VM_KEYS = {"name": str, "mean_free": int, "mean_cached": int, "mean_actual": int,
           "swap_in": int, "swap_out": int, "run_time": float}
HOST_KEYS = {"mean_free": int, "mean_anon": int, "ksm_saved": int}


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    env = {"BALLOONCTL_DIR": "", "BALLOONCTL_STATE": str(tmp_path / "state.json"),
           "BALLOONCTL_CONFIG": str(tmp_path / "absent.toml"), "BALLOONCTL_WELLKNOWN": ""}

    def invoke(*args: str) -> Result:
        result = CliRunner().invoke(app, list(args), env=env, prog_name="balloonctl")
        assert "Traceback" not in result.stderr, result.stderr
        return result

    return invoke


def assert_rfc_direction(off: RunResult, on: RunResult, *, min_gain: int) -> None:
    """Each VM: more free memory and less page cache with the hint (by at least
    ``min_gain``), no more swapping, the same run time within a few percent."""
    assert not off.hint and on.hint
    before = {v.name: v for v in off.vms}
    assert set(before) == {v.name for v in on.vms}
    for v in on.vms:
        b = before[v.name]
        assert v.mean_free >= b.mean_free + min_gain, (v, b)
        assert v.mean_cached <= b.mean_cached - min_gain, (v, b)
        # the same workload: swapping is the same but for the guest's timing (5 % + 8 MiB)
        assert v.swap_out <= b.swap_out * 1.05 + 8 * MiB, (v, b)
        assert v.swap_in <= b.swap_in * 1.05 + 8 * MiB, (v, b)
        assert v.run_time is not None and b.run_time is not None
        assert abs(v.run_time / b.run_time - 1) <= 0.03, (v.run_time, b.run_time)


# --- the simulated clock and workload ------------------------------------------------------


async def test_the_sim_clock_wakes_sleepers_only_when_ticked_past_their_time() -> None:
    clock = SimClock(speed=10.0, epoch=1000.0)
    woke: list[float] = []

    async def sleeper(t: float) -> None:
        await clock.sleep_until(t)
        woke.append(clock.now())

    tasks = [asyncio.create_task(sleeper(t)) for t in (2.0, 1.0)]
    await asyncio.sleep(0)
    clock.advance(0.999)
    await asyncio.sleep(0)
    assert woke == []  # one step short of the earlier one
    clock.advance(0.001)
    await asyncio.sleep(0)
    assert woke == [1.0]
    clock.advance(5.0)
    await asyncio.gather(*tasks)
    assert woke == [1.0, 6.0]
    assert clock.wall() == 1006.0


def test_memory_pressure_slows_the_compile_workload_down() -> None:
    """The same build: with plenty of memory it takes its work plus the cold reads; in a
    guest too small for its page cache and jobs it rereads sources and swaps, and takes
    longer; the run time is the work plus every stall."""
    roomy = GuestSim(2 * GiB, seed=3)
    tight = GuestSim(2 * GiB, seed=3)
    tight.set_target(600 * MiB)
    tight.step_balloon(2 * GiB)
    for g in (roomy, tight):
        g.work_goal, g.workload = 30.0, "compile"
        for _ in range(5000):
            if g.work_finished is not None:
                break
            g.workload_step()
    assert roomy.work_finished is not None and tight.work_finished is not None
    assert roomy.work_finished > 30.0  # the first build reads its sources from disk
    assert tight.disk_reads > roomy.disk_reads
    assert tight.swap_out > 0 and roomy.swap_out == 0
    assert tight.work_finished > roomy.work_finished * 1.1
    assert roomy.workload == "idle"  # the build is over


# --- the experiments on the simulator -----------------------------------------------------


def test_wave_on_the_simulator_goes_the_rfcs_way(cli: Cli) -> None:
    result = cli("experiment", "wave", *FAST_WAVE, "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["experiment"] == "wave" and data["clock"] == "simulated"
    parsed = [RunResult(r["hint"], [_vm(v) for v in r["vms"]], _host(r["host"]))
              for r in data["runs"]]
    assert [len(r.vms) for r in parsed] == [1, 1]
    assert_rfc_direction(parsed[0], parsed[1], min_gain=16 * MiB)
    # the wave went from 1500 MB down to 500 MB and back: it averages about 1000 MB
    for r in parsed:
        assert 900 * MiB < r.vms[0].mean_actual < 1100 * MiB
    # the balloon took touched memory from cache, not free memory: the host got it back
    assert parsed[1].host.mean_anon < parsed[0].host.mean_anon


async def test_overcommit_on_the_simulator_goes_the_rfcs_way() -> None:
    """Six 2 GiB guests on a host short enough to be under pressure within a short build:
    the policy reclaims, with the hint from page cache first."""
    setup = replace(OVERCOMMIT_SIM, host_mem=6 * GiB, work=40.0, speed=80.0)
    controls: list[PolicyControl] = []

    def control() -> PolicyControl:
        controls.append(PolicyControl(PolicySettings(cycle=5.0)))
        return controls[-1]

    result = await run_experiment("overcommit", "simulated", sim_benches(setup), control,
                                  duration=None, sample=1.0)
    off, on = result.runs
    assert len(on.vms) == 6
    assert_rfc_direction(off, on, min_gain=16 * MiB)
    assert on.host.mean_anon < off.host.mean_anon
    assert on.host.ksm_saved > 0 and off.host.ksm_saved > 0  # KSM on, six like guests
    # the policy did reclaim, in both runs, through the same client path
    for c in controls:
        shrunk = [d for cycle in c.decisions for d in cycle if d.action == "shrink"]
        assert shrunk, "the host was never short: the test does not test anything"


def _vm(v: dict[str, Any]) -> Any:
    from balloonctl.experiment import VmResult

    return VmResult(**v)


def _host(h: dict[str, Any]) -> Any:
    from balloonctl.experiment import HostResult

    return HostResult(**h)


def test_the_json_has_exactly_the_documented_keys_and_types(cli: Cli) -> None:
    result = cli("experiment", "wave", "--work", "5s", "--speed", "40", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {"experiment", "clock", "runs"}
    assert [r["hint"] for r in data["runs"]] == [False, True]
    for run in data["runs"]:
        assert set(run) == {"hint", "vms", "host"}
        assert isinstance(run["hint"], bool)
        for vm in run["vms"]:
            assert set(vm) == {*VM_KEYS, "hint_method"}
            for key, kind in VM_KEYS.items():
                assert type(vm[key]) is kind, (key, vm[key])  # ints are not floats
            # The simulator's VMs have the RFC's patched device: the hint-on run says so.
            assert vm["hint_method"] == ("device" if run["hint"] else None)
        assert set(run["host"]) == set(HOST_KEYS)
        for key, kind in HOST_KEYS.items():
            assert type(run["host"][key]) is kind, (key, run["host"][key])
    assert result.stderr == ""  # no progress lines off a terminal


def test_the_table_shows_each_run_and_the_difference(cli: Cli) -> None:
    result = cli("experiment", "wave", "--work", "5s", "--speed", "40")
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert "experiment wave (simulated clock): hint off" in text
    assert "experiment wave (simulated clock): hint on" in text
    assert "difference, hint on - off" in text
    header = [line for line in text.splitlines() if line.startswith("VM ")]
    assert len(header) == 3 and "RUN TIME" in header[0]
    # Each run's table ends in the hint's method per VM: none with the hint off, the
    # patched device (the simulator's) with it on; the difference has no such column.
    off, on = (part.split("\n\n")[0] for part in text.split("experiment wave")[1:3])
    off_rows = [line.split() for line in off.splitlines()[2:] if not line.startswith("host")]
    on_rows = [line.split() for line in on.splitlines()[2:] if not line.startswith("host")]
    assert header[0].split()[-2:] == ["HINT", "METHOD"] and "METHOD" not in header[2]
    assert off_rows and all(row[-1] == "-" for row in off_rows)
    assert on_rows and all(row[-1] == "device" for row in on_rows)
    assert text.count("host: ") == 3


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG\r\n\x1a\n"), (".svg", b"<svg")])
def test_chart_writes_a_valid_file(cli: Cli, tmp_path: Path, suffix: str, magic: bytes) -> None:
    pytest.importorskip("matplotlib", reason="the chart extra is part of the test extra")
    chart = tmp_path / f"wave{suffix}"
    result = cli("experiment", "wave", "--work", "5s", "--speed", "40", "--chart", str(chart))
    assert result.exit_code == 0, result.stderr
    data = chart.read_bytes()
    if suffix == ".png":
        assert data.startswith(magic)
    else:
        assert magic in data[:1000] and data.rstrip().endswith(b"</svg>")
        assert b"hint on" in data and b"hint off" in data
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_missing_matplotlib_is_a_polite_error(cli: Cli, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    result = cli("experiment", "wave", "--chart", str(tmp_path / "c.png"))
    assert result.exit_code == ExitCode.USAGE
    assert result.stderr.strip() == ("balloonctl: error: --chart needs matplotlib, which is not "
                                     "installed: pip install 'balloonctl[chart]'")
    assert result.stdout == ""


@pytest.mark.parametrize("args, message", [
    (["wave", "--chart", "out.jpg"], "--chart: 'out.jpg' must end in .png or .svg"),
    (["wave", "--chart", "/no/such/dir/c.svg"], "--chart: no directory '/no/such/dir'"),
    (["wave", "--min", "1500M", "--max", "500M"], "--min (1.5 GiB) must be below --max"),
    (["wave", "--period", "10s", "--step", "6s"], "--step (6s) must be at most half"),
    (["wave", "--duration", "soon"], "--duration: invalid duration 'soon'"),
    (["wave", "--work", "0s"], "--work: invalid duration '0s': must be greater than zero"),
    (["wave", "--workload", "make"], "--workload runs a command in real guests"),
    (["overcommit", "--format", "csv"], "--format csv: experiment prints a table or json"),
    (["wave", "--json", "--format", "csv"], "--json and --format csv conflict"),
])
def test_bad_options_are_one_line_and_exit_2(cli: Cli, args: list[str], message: str) -> None:
    result = cli("experiment", *args)
    assert result.exit_code == ExitCode.USAGE, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("balloonctl: error: "), result.stderr
    assert message in lines[0]
    assert result.stdout == ""


def test_real_vms_need_a_duration_or_a_workload(cli: Cli, tmp_path: Path) -> None:
    result = cli("--qmp", str(tmp_path / "vm1.qmp"), "experiment", "wave")
    assert result.exit_code == ExitCode.USAGE
    assert result.stderr.strip() == ("balloonctl: error: on real VMs, give --duration or "
                                     "--workload (or both)")
    result = cli("--qmp", str(tmp_path / "vm1.qmp"), "experiment", "wave", "--work", "9s")
    assert result.exit_code == ExitCode.USAGE
    assert "--work is for the simulator" in result.stderr


async def test_a_duration_ends_a_simulated_run_before_its_workload() -> None:
    setup = SimSetup(vms=1, ram=2 * GiB, host_mem=4 * GiB, work=500.0, speed=50.0)
    from balloonctl.experiment import WaveControl

    result: ExperimentResult = await run_experiment(
        "wave", "simulated", sim_benches(setup),
        lambda: WaveControl(500 * MiB, 1500 * MiB, 20.0, 1.0), duration=12.0, sample=1.0,
        hints=(False,))
    (run,) = result.runs
    assert 12.0 <= run.seconds < 13.5
    assert run.vms[0].run_time is None  # unfinished: no run time rather than a guess
    assert result.to_json()["runs"][0]["vms"][0]["run_time"] is None
