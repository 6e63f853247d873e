"""The CLI against the fake QEMU: every command, its output formats, errors and exit codes.

The fake VMs run on their own loop in a thread (``run_in_thread``), because the commands
call ``asyncio.run`` themselves. Commands run in process through typer's CliRunner.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from balloonctl import config
from balloonctl.cli.app import app
from balloonctl.cli.exitcodes import ExitCode
from balloonctl.fake import FakeVM, run_in_thread
from balloonctl.model import JSON_KEYS
from balloonctl.units import GiB, MiB
from balloonctl.wave import triangle_wave

FAST: dict[str, Any] = {"tick": 0.01, "rate": 4 * GiB, "stats_interval": 2}

Start = Callable[..., FakeVM]
Cli = Callable[..., Result]


@pytest.fixture
def env(fake_dir: Path, tmp_path: Path) -> dict[str, str]:
    """An inventory of exactly the fake dir, a private state file, no config."""
    return {
        "BALLOONCTL_DIR": str(fake_dir),
        "BALLOONCTL_STATE": str(tmp_path / "state.json"),
        "BALLOONCTL_CONFIG": str(tmp_path / "absent.toml"),
        "BALLOONCTL_WELLKNOWN": "",
    }


@pytest.fixture
def start(fake_dir: Path) -> Iterator[Start]:
    """``start("vm1", **FakeVM kwargs)``: a fake VM serving in a thread until teardown."""
    with contextlib.ExitStack() as stack:

        def make(name: str = "vm1", **kwargs: Any) -> FakeVM:
            vm = FakeVM(name, fake_dir, **{**FAST, **kwargs})
            return stack.enter_context(run_in_thread(vm))

        yield make


@pytest.fixture
def cli(env: dict[str, str]) -> Cli:
    def invoke(*args: str, extra_env: dict[str, str] | None = None) -> Result:
        result = CliRunner().invoke(app, list(args), env={**env, **(extra_env or {})},
                                    prog_name="balloonctl")
        # however it failed, the user sees one line per error and never a traceback
        assert "Traceback" not in result.stderr, result.stderr
        for line in result.stderr.splitlines():
            assert line.startswith("balloonctl: "), result.stderr
            assert "\x1b[" not in line
        return result

    return invoke


def states(result: Result) -> dict[str, dict[str, Any]]:
    data = json.loads(result.stdout)
    return {d["name"]: d for d in data}


def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


# ---- status -------------------------------------------------------------------------------


def test_status_table_lists_every_vm(start: Start, cli: Cli) -> None:
    start("vm1")
    start("vm2", ram=1 * GiB)
    r = cli("status")
    assert r.exit_code == ExitCode.OK, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:4] == ["NAME", "STATE", "ACTUAL", "RAM"]
    assert [line.split()[0] for line in lines[1:]] == ["vm1", "vm2"]
    assert lines[2].split()[1:4] == ["ok", "1G", "1G"]


def test_status_table_shows_swap_in_and_out_as_sizes(start: Start, cli: Cli) -> None:
    vm = start("vm1")
    vm.call_threadsafe(setattr, vm.guest, "swap_in", 3 * MiB)
    vm.call_threadsafe(setattr, vm.guest, "swap_out", 5 * GiB)
    assert cli("stats", "vm1", "--interval", "1").exit_code == ExitCode.OK
    wait_until(lambda: "3M" in cli("status").stdout)
    header, row = cli("status").stdout.splitlines()
    cells = dict(zip(header.split(), row.split(), strict=True))
    assert (cells["SWAPIN"], cells["SWAPOUT"]) == ("3M", "5G")


def test_status_json_is_exactly_the_snapshot(start: Start, cli: Cli) -> None:
    start("vm1")
    r = cli("status", "--json")
    assert r.exit_code == 0
    (vm,) = json.loads(r.stdout)
    assert tuple(vm) == JSON_KEYS
    assert vm["actual"] == vm["guest_ram"] == 2 * GiB
    assert vm["status"] == "ok" and vm["driver_ready"] is True
    assert tuple(json.loads(cli("status", "--format", "json").stdout)[0]) == JSON_KEYS


def test_status_ndjson_and_csv(start: Start, cli: Cli) -> None:
    start("vm1")
    start("vm2")
    nd = cli("status", "-f", "ndjson")
    rows = [json.loads(line) for line in nd.stdout.splitlines()]
    assert [r["name"] for r in rows] == ["vm1", "vm2"]
    assert all(tuple(r) == JSON_KEYS for r in rows)
    c = cli("status", "--format", "csv")
    table = list(csv.reader(io.StringIO(c.stdout)))
    assert tuple(table[0]) == JSON_KEYS
    assert [row[0] for row in table[1:]] == ["vm1", "vm2"]


def test_status_of_a_missing_socket_is_unreachable(cli: Cli, fake_dir: Path) -> None:
    r = cli("--qmp", str(fake_dir / "gone.qmp"), "status", "gone")
    assert r.exit_code == ExitCode.UNREACHABLE
    assert r.stderr.count("\n") == 1 and "gone" in r.stderr
    assert "unreachable" in r.stdout


def test_a_qmp_path_that_is_no_socket_says_so(cli: Cli, tmp_path: Path) -> None:
    plain = tmp_path / "passwd"
    plain.write_text("root:x:0:0\n")
    r = cli("--qmp", str(plain), "status")
    assert r.exit_code == ExitCode.UNREACHABLE
    assert f"cannot connect to QMP socket {plain}: not a socket" in r.stderr
    assert "probably exited" not in r.stderr


def test_one_unreachable_vm_is_a_partial_failure(start: Start, cli: Cli, fake_dir: Path) -> None:
    start("vm1")
    r = cli("--qmp", f"ghost={fake_dir / 'ghost.sock'}", "status", "--json")
    assert r.exit_code == ExitCode.PARTIAL
    got = states(r)
    assert got["vm1"]["reachable"] is True
    assert got["ghost"]["reachable"] is False and got["ghost"]["error_kind"]
    assert r.stderr.startswith("balloonctl: error: ghost:")


def test_busy_socket_says_so_and_names_libvirt(
    start: Start, cli: Cli, fake_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vm = start("vm1")
    holder = socket.socket(socket.AF_UNIX)
    holder.connect(str(vm.qmp_path))
    try:
        holder.recv(4096)  # the greeting: we are the one client QEMU serves now
        r = cli("--timeout", "0.3s", "status", "vm1")
        assert r.exit_code == ExitCode.UNREACHABLE
        assert "another QMP client" in r.stderr
        assert r.stderr.startswith("balloonctl: error: vm1: ") and "vm1: vm1:" not in r.stderr
        assert r.stdout.splitlines()[1].split()[1] == "busy"
        monkeypatch.setattr(config, "LIBVIRT_ROOTS", (str(fake_dir),))
        # a socket where libvirt keeps its monitors is not tried: the user is sent to --libvirt
        r = cli("--timeout", "0.3s", "set", "vm1", "1G")
        assert r.exit_code == ExitCode.UNREACHABLE
        assert "is libvirt's monitor socket" in r.stderr
        assert "balloonctl --libvirt qemu:///system" in r.stderr
        assert "another QMP client" not in r.stderr
    finally:
        holder.close()


def test_status_watch_refreshes(start: Start, cli: Cli) -> None:
    start("vm1")
    r = cli("status", "--watch", "--interval", "0.05s", "--count", "3")
    assert r.exit_code == 0
    assert r.stdout.count("NAME") == 3


def test_verbose_shows_the_qmp_exchange(start: Start, cli: Cli) -> None:
    start("vm1")
    r = cli("-v", "status", "vm1")
    assert r.exit_code == 0
    assert 'vm1 -> {"execute":"query-balloon"' in r.stderr
    assert "vm1 <- " in r.stderr
    assert "NAME" in r.stdout and "query-balloon" not in r.stdout


# ---- set ----------------------------------------------------------------------------------


def test_set_absolute_and_wait(start: Start, cli: Cli) -> None:
    start("vm1")
    r = cli("set", "vm1", "1.5G", "--wait")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith("vm1: reached 1.5 GiB")
    vm = states(cli("status", "--json"))["vm1"]
    assert vm["target"] == 1536 * MiB
    assert abs(vm["actual"] - 1536 * MiB) <= 2 * MiB


def test_set_percent_then_relative_without_double_dash(start: Start, cli: Cli) -> None:
    start("vm1")
    assert cli("set", "vm1", "50%").exit_code == 0
    assert states(cli("status", "--json"))["vm1"]["target"] == 1 * GiB
    r = cli("set", "vm1", "-256M")
    assert r.exit_code == 0, r.stderr
    assert states(cli("status", "--json"))["vm1"]["target"] == 768 * MiB
    assert cli("set", "vm1", "--", "+512M").exit_code == 0
    assert states(cli("status", "--json"))["vm1"]["target"] == 1280 * MiB


def test_set_dry_run_sends_nothing(start: Start, cli: Cli) -> None:
    start("vm1")
    r = cli("set", "vm1", "1G", "--dry-run")
    assert r.exit_code == 0
    assert '{"execute": "balloon", "arguments": {"value": 1073741824}}' in r.stdout
    vm = states(cli("status", "--json"))["vm1"]
    assert vm["target"] is None and vm["actual"] == 2 * GiB


def test_set_several_vms_by_glob(start: Start, cli: Cli) -> None:
    start("web-1")
    start("web-2")
    start("db")
    r = cli("set", "web-*", "1G")
    assert r.exit_code == 0
    got = states(cli("status", "--json"))
    assert got["web-1"]["target"] == got["web-2"]["target"] == 1 * GiB
    assert got["db"]["target"] is None


@pytest.mark.parametrize(
    ("size", "force", "code"),
    [
        ("3G", False, ExitCode.UNSAFE_TARGET),  # above guest RAM (QEMU would clamp silently)
        ("200M", False, ExitCode.UNSAFE_TARGET),  # below the 256 MiB floor
        ("200M", True, ExitCode.OK),
        ("100M", True, ExitCode.UNSAFE_TARGET),  # below the hard minimum, even forced
    ],
)
def test_unsafe_targets_are_refused(
    start: Start, cli: Cli, size: str, force: bool, code: ExitCode
) -> None:
    start("vm1")
    r = cli("set", "vm1", size, *(["--force"] if force else []))
    assert r.exit_code == code, r.stderr
    if code is not ExitCode.OK:
        assert r.stderr.startswith("balloonctl: error: vm1: target")
        assert states(cli("status", "--json"))["vm1"]["target"] is None


@pytest.mark.parametrize("size", ["abc", "12XB", "0", "1e999", "-0", "150%", "%"])
def test_bad_sizes_are_usage_errors(start: Start, cli: Cli, size: str) -> None:
    start("vm1")
    r = cli("set", "vm1", size)
    assert r.exit_code == ExitCode.USAGE
    assert r.stderr.startswith("balloonctl: error: ")
    assert r.stderr.count("\n") == 1


def test_unknown_vm_suggests_close_names(start: Start, cli: Cli) -> None:
    start("web-1")
    r = cli("set", "web1", "1G")
    assert r.exit_code == ExitCode.USAGE
    assert "unknown VM 'web1'" in r.stderr and "did you mean web-1" in r.stderr
    assert cli("status", "nomatch-*").exit_code == ExitCode.USAGE


def test_no_inventory_says_where_vms_come_from(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    r = cli("status", extra_env={"BALLOONCTL_DIR": str(tmp_path / "empty")})
    assert r.exit_code == ExitCode.USAGE
    assert "--qmp" in r.stderr and "BALLOONCTL_DIR" in r.stderr


def test_a_dir_or_config_given_explicitly_must_exist(start: Start, cli: Cli,
                                                     tmp_path: Path) -> None:
    start("vm1")
    r = cli("--dir", str(tmp_path / "nope"), "status")
    assert r.exit_code == ExitCode.USAGE
    assert r.stderr == f"balloonctl: error: --dir {tmp_path / 'nope'}: no such directory\n"
    r = cli("status", extra_env={"BALLOONCTL_DIR": str(tmp_path / "nope")})
    assert r.exit_code == ExitCode.USAGE and "BALLOONCTL_DIR" in r.stderr
    r = cli("--config", str(tmp_path / "nope.toml"), "status")
    assert r.exit_code == ExitCode.USAGE and "nope.toml: no such file" in r.stderr


def test_qmp_error_is_reported(start: Start, cli: Cli) -> None:
    vm = start("vm1")
    vm.faults.errors["balloon"] = ("GenericError", "something broke")
    r = cli("set", "vm1", "1G")
    assert r.exit_code == ExitCode.QMP_ERROR
    assert "something broke" in r.stderr


def test_no_balloon_device(start: Start, cli: Cli) -> None:
    start("vm1", balloon=False)
    r = cli("set", "vm1", "1G")
    assert r.exit_code == ExitCode.QMP_ERROR
    assert "balloon" in r.stderr
    assert states(cli("status", "--json"))["vm1"]["status"] == "no-device"


def test_stuck_balloon_times_out(start: Start, cli: Cli) -> None:
    vm = start("vm1")
    vm.faults.stuck = True
    r = cli("set", "vm1", "1G", "--wait", "--timeout", "0.5s")
    assert r.exit_code == ExitCode.TIMEOUT
    assert "vm1" in r.stderr


def test_no_driver_never_converges(start: Start, cli: Cli) -> None:
    start("vm1", driver=False)
    r = cli("set", "vm1", "1G", "--wait", "--timeout", "0.5s")
    assert r.exit_code == ExitCode.TIMEOUT
    assert "driver" in r.stderr


def test_one_failing_vm_does_not_stop_the_others(start: Start, cli: Cli) -> None:
    start("vm1")
    bad = start("vm2")
    bad.faults.errors["balloon"] = ("GenericError", "nope")
    r = cli("set", "vm1", "vm2", "1G")
    assert r.exit_code == ExitCode.PARTIAL
    assert r.stdout.startswith("vm1: target 1 GiB")
    assert r.stderr.startswith("balloonctl: error: vm2:")


def test_set_usage_errors(start: Start, cli: Cli) -> None:
    start("vm1")
    assert cli("set", "vm1").exit_code == ExitCode.USAGE
    assert cli("set", "--all", "vm1", "1G").exit_code == ExitCode.USAGE
    r = cli("set", "vm1", "1G", "--frobnicate")
    assert r.exit_code == ExitCode.USAGE and "--frobnicate" in r.stderr
    assert cli("set", "--all", "1G").exit_code == ExitCode.OK


# ---- hint, stats, preflight ---------------------------------------------------------------


def test_hint_agent_mode(start: Start, cli: Cli) -> None:
    start("vm1")
    r = cli("hint", "vm1")
    assert r.exit_code == 0
    assert r.stdout.startswith("vm1: hint off (agent mode")
    assert cli("hint", "vm1", "on").stdout.startswith("vm1: hint on (agent mode")
    r = cli("hint", "vm1", "status", "--json")
    (h,) = json.loads(r.stdout)
    assert set(h) <= set(JSON_KEYS)
    assert h["hint_mode"] == "agent" and h["hint_enabled"] is True


def test_hint_says_which_method_and_why(start: Start, cli: Cli, tmp_path: Path) -> None:
    start("vm1")
    start("vm2", qga_memory_reclaim=False)
    start("vm3", qga_cgroup2=False)
    rows = {h["name"]: h for h in json.loads(cli("hint", "--all", "status", "--json").stdout)}
    assert {n: h["hint_method"] for n, h in rows.items()} == {
        "vm1": "reclaim", "vm2": "drop", "vm3": "drop"}
    assert "memory.reclaim missing" in rows["vm2"]["hint_detail"]
    lines = cli("hint", "vm3").stdout
    assert lines.startswith("vm3: hint off (agent mode, method drop: ")
    assert "cgroup2 not mounted" in lines and "hint_mount_cgroup" in lines
    # Told to mount cgroup2 in the config: turning the hint on mounts it, and reclaim is used.
    cfg = tmp_path / "mount.toml"
    cfg.write_text("[defaults]\nhint_mount_cgroup = true\n")
    r = cli("hint", "vm3", "on", extra_env={"BALLOONCTL_CONFIG": str(cfg)})
    assert r.stdout.startswith("vm3: hint on (agent mode, method reclaim: "), r.stdout
    assert states(cli("status", "--json"))["vm3"]["hint_method"] == "reclaim"


def test_hint_device_mode(start: Start, cli: Cli) -> None:
    start("vm1", hint_device=True)
    assert cli("hint", "vm1", "on").stdout.startswith("vm1: hint on (device mode")
    assert states(cli("status", "--json"))["vm1"]["hint_mode"] == "device"


def test_hint_with_a_misspelt_action_says_what_it_expected(start: Start, cli: Cli) -> None:
    start("vm1")
    start("vm2")
    for args in (["vm1", "maybe"], ["--all", "maybe"]):
        r = cli("hint", *args)
        assert r.exit_code == ExitCode.USAGE
        assert r.stderr == ("balloonctl: error: expected on, off or status as the last word, "
                            "got 'maybe'\n")
    assert cli("hint", "vm1", "vm2").exit_code == ExitCode.OK  # two VMs, status
    assert "unknown VM 'maybe'" in cli("hint", "maybe").stderr  # one word is a VM


def test_hint_unsupported_without_agent(start: Start, cli: Cli) -> None:
    start("vm1", agent=False)
    assert "unsupported" in cli("hint", "vm1").stdout
    r = cli("hint", "vm1", "on")
    assert r.exit_code == ExitCode.QMP_ERROR
    assert "agent" in r.stderr


def test_stats_sets_the_polling_interval(start: Start, cli: Cli) -> None:
    start("vm1")
    r = cli("stats", "vm1", "--interval", "3")
    assert r.exit_code == 0 and r.stdout == "vm1: guest stats every 3s\n"
    assert states(cli("status", "--json"))["vm1"]["polling_interval"] == 3
    r = cli("stats", "--interval", "3")  # changing every VM needs --all
    assert r.exit_code == ExitCode.USAGE and "--all" in r.stderr


def test_preflight_ok(start: Start, cli: Cli) -> None:
    start("vm1")
    cli("stats", "vm1", "--interval", "1")
    r = cli("preflight", "vm1", "--json")
    assert r.exit_code == 0, r.stderr
    (report,) = json.loads(r.stdout)
    checks = {c["check"]: c for c in report["checks"]}
    assert report["ok"] is True
    for name in ("driver loaded", "stats flowing", "guest agent", "guest-exec", "hint mode"):
        assert checks[name]["result"] == "ok", checks[name]
    for name in ("polling interval", "deflate-on-oom", "free-page-reporting", "free-page-hint"):
        assert checks[name]["result"] == "info"
    table = cli("preflight", "vm1").stdout
    assert "deflate-on-oom" in table and "guest-exec" in table


def test_preflight_finds_problems(start: Start, cli: Cli) -> None:
    start("vm1", driver=False, agent_exec=False, deflate_on_oom=True)
    r = cli("preflight", "vm1", "--json")
    assert r.exit_code == ExitCode.QMP_ERROR
    checks = {c["check"]: c for c in json.loads(r.stdout)[0]["checks"]}
    assert checks["driver loaded"]["result"] == "fail"
    assert checks["guest-exec"]["result"] == "warn"
    assert checks["deflate-on-oom"]["detail"] == "on"
    assert "driver loaded" in r.stderr


# ---- watch --------------------------------------------------------------------------------


def test_watch_streams_snapshots_and_balloon_events(start: Start, cli: Cli) -> None:
    start("vm1", rate=32 * MiB)
    # the balloon takes ~32 s to get there: it is certainly still moving while watch runs,
    # however slowly a busy machine starts the command
    assert cli("set", "vm1", "1G").exit_code == 0
    # QEMU rate-limits BALLOON_CHANGE to one a second: watch for 2.4 s
    r = cli("watch", "--interval", "0.4s", "--count", "6")
    assert r.exit_code == 0
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    snaps = [x for x in lines if "event" not in x]
    assert len(snaps) == 6 and all(tuple(s) == JSON_KEYS for s in snaps)
    assert snaps[0]["actual"] > snaps[-1]["actual"]
    changes = [x for x in lines if x.get("event") == "BALLOON_CHANGE"]
    assert changes and all(c["name"] == "vm1" and "actual" in c["data"] for c in changes)


def test_watch_csv_polite(start: Start, cli: Cli) -> None:
    start("vm1")
    start("vm2")
    r = cli("watch", "--format", "csv", "--interval", "0.05s", "--count", "2")
    rows = list(csv.reader(io.StringIO(r.stdout)))
    assert tuple(rows[0]) == JSON_KEYS
    assert [row[0] for row in rows[1:]] == ["vm1", "vm2", "vm1", "vm2"]


# ---- wave ---------------------------------------------------------------------------------


def test_wave_follows_a_triangle_and_restores(start: Start, cli: Cli) -> None:
    start("vm1")
    assert cli("set", "vm1", "1800M").exit_code == 0
    r = cli("wave", "vm1", "--min", "600M", "--max", "1400M", "--period", "8s",
            "--step", "0.5s", "--cycles", "1", "--speed", "40", "-f", "ndjson")
    assert r.exit_code == 0, r.stderr
    steps = [json.loads(line) for line in r.stdout.splitlines()]
    *wave, restore = steps
    assert [s["t"] for s in wave] == [i * 0.5 for i in range(17)]
    targets = [s["target"] for s in wave]
    assert targets == [
        triangle_wave(s["t"], minimum=600 * MiB, maximum=1400 * MiB, period=8)
        for s in wave
    ]
    assert targets[0] == targets[-1] == 1400 * MiB and targets[8] == 600 * MiB
    down, up = targets[:9], targets[8:]
    assert down == sorted(down, reverse=True) and up == sorted(up)
    assert restore["restore"] is True and restore["target"] == 1800 * MiB
    assert states(cli("status", "--json"))["vm1"]["target"] == 1800 * MiB


def test_wave_table_and_bad_bounds(start: Start, cli: Cli) -> None:
    start("vm1")
    r = cli("wave", "vm1", "--min", "1G", "--max", "1.5G", "--period", "1s", "--cycles", "1",
            "--speed", "50")
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["T", "TARGET", "ACTUAL", "NOTE"]
    assert lines[-1].endswith("restored the original target")
    assert cli("wave", "vm1", "--min", "1.5G", "--max", "1G").exit_code == ExitCode.USAGE
    assert cli("wave", "vm1", "--min", "100M", "--max", "1G").exit_code == (
        ExitCode.UNSAFE_TARGET)


def test_wave_refuses_to_start_when_it_could_not_restore(start: Start, cli: Cli,
                                                        tmp_path: Path) -> None:
    """The VM sits at 2 GiB (its whole RAM) but its configured max is 1.5 GiB: a wave between
    1 and 1.5 GiB could never put 2 GiB back, so it refuses before moving anything."""
    start("vm1")
    cfg = tmp_path / "config.toml"
    cfg.write_text('[vm.vm1]\nmax = "1.5G"\n')
    r = cli("--config", str(cfg), "wave", "vm1", "--min", "1G", "--max", "1.5G",
            "--period", "1s", "--cycles", "1", "--speed", "50", "-f", "ndjson")
    assert r.exit_code == ExitCode.UNSAFE_TARGET, r.stderr
    assert r.stdout == ""
    assert r.stderr.startswith("balloonctl: error: vm1: will not start: the wave could not "
                               "set the original target 2 GiB again")
    assert "maximum" in r.stderr
    vm = states(cli("--config", str(cfg), "status", "--json"))["vm1"]
    assert vm["actual"] == 2 * GiB and vm["target"] is None  # nothing was sent
    # within the limits it runs, and restores
    assert cli("--config", str(cfg), "set", "vm1", "1.4G").exit_code == 0
    r = cli("--config", str(cfg), "wave", "vm1", "--min", "1G", "--max", "1.5G",
            "--period", "1s", "--cycles", "1", "--speed", "50", "-f", "ndjson")
    assert r.exit_code == 0, r.stderr
    restore = json.loads(r.stdout.splitlines()[-1])
    assert restore["restore"] is True and restore["target"] == int(1.4 * GiB)


def test_wave_takes_exactly_one_vm(start: Start, cli: Cli) -> None:
    for name in ("vm1", "vm2", "vm3"):
        start(name)
    r = cli("wave", "vm*", "--period", "1s", "--cycles", "1", "--speed", "50")
    assert r.exit_code == ExitCode.USAGE
    assert r.stderr == "balloonctl: error: wave takes one VM; 'vm*' matches vm1, vm2, vm3\n"
    assert r.stdout == ""
    r = cli("wave", "vm[2]", "--min", "1G", "--max", "1.5G", "--period", "1s", "--cycles", "1",
            "--speed", "50", "-f", "ndjson")
    assert r.exit_code == ExitCode.OK and '"name":"vm2"' in r.stdout


def test_wave_step_must_be_at_most_half_the_period(start: Start, cli: Cli) -> None:
    start("vm1")
    r = cli("wave", "vm1", "--step", "5s", "--period", "2s", "--cycles", "1", "--speed", "50")
    assert r.exit_code == ExitCode.USAGE
    assert "--step (5s) must be at most half of --period (2s)" in r.stderr
    r = cli("wave", "vm1", "--min", "1G", "--max", "1.5G", "--step", "1s", "--period", "2s",
            "--cycles", "1", "--speed", "50", "-f", "ndjson")
    assert r.exit_code == ExitCode.OK, r.stderr


# ---- demo, dashboard, completion, misc ----------------------------------------------------


def test_demo_once_prints_the_simulated_fleet(cli: Cli) -> None:
    r = cli("demo", "--once", "--vms", "2", "--mem", "1G", "--json")
    assert r.exit_code == 0, r.stderr
    got = states(r)
    assert sorted(got) == ["vm1", "vm2"]
    assert all(s["guest_ram"] == 1 * GiB and s["polling_interval"] == 1 for s in got.values())


def test_dashboard_opens_the_tui_on_the_selected_vms(
    start: Start, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tui.app

    start("web-1")
    start("db")
    seen: dict[str, Any] = {}

    def fake_run(source: Any, **opts: Any) -> None:
        seen["names"] = list(source.names)
        seen["opts"] = opts

    monkeypatch.setattr(tui.app, "run_dashboard", fake_run)
    assert cli("top", "web-*", "--interval", "2s").exit_code == 0
    auto = seen["opts"].pop("auto")
    # automatic ballooning over the same VMs, switched off until asked for
    assert auto.names == ["web-1"] and auto.enabled == set() and auto.fleet.names == ["web-1"]
    assert seen == {"names": ["web-1"], "opts": {"interval": 2.0, "step": 128 * MiB,
                                                 "host_root": Path("/")}}


def test_completion_prints_each_script(cli: Cli) -> None:
    from balloonctl.cli.scripts import script

    for shell in ("bash", "zsh", "fish"):
        r = cli("completion", shell)
        assert r.exit_code == 0 and r.stdout == script(shell)
    assert cli("completion", "tcsh").exit_code == ExitCode.USAGE


def test_no_arguments_and_version(cli: Cli) -> None:
    r = cli()
    assert r.exit_code == ExitCode.USAGE and "Commands" in r.stderr + r.stdout
    v = cli("--version")
    assert v.exit_code == 0 and v.stdout.startswith("balloonctl ")


def test_format_and_json_must_agree(start: Start, cli: Cli) -> None:
    start("vm1")
    r = cli("status", "-f", "table", "--json")
    assert r.exit_code == ExitCode.USAGE
    assert r.stderr == "balloonctl: error: --json and --format table conflict\n"
    assert cli("status", "--format", "json", "--json").exit_code == ExitCode.OK
    r = cli("status", "--format", "yaml")
    assert r.exit_code == ExitCode.USAGE
    assert "Value error" not in r.stderr
    assert "Invalid value for '--format' / '-f': 'yaml' is not one of" in r.stderr


def test_global_options_also_work_after_the_command(start: Start, cli: Cli, fake_dir: Path,
                                                    tmp_path: Path) -> None:
    start("vm1")
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli("status", "--dir", str(empty))
    assert r.exit_code == ExitCode.USAGE and "no VMs known" in r.stderr
    r = cli("status", "vm1", "--json", f"--qmp=other={fake_dir}/vm1.qmp", "-v",
            "--timeout", "2s", "--config", str(tmp_path / "nope.toml"))
    assert r.exit_code == ExitCode.USAGE and "nope.toml: no such file" in r.stderr
    r = cli("status", "other", "--json", f"--qmp=other={fake_dir}/vm1.qmp", "-v",
            "--timeout", "2s")
    assert r.exit_code == ExitCode.OK, r.stderr
    assert states(r)["other"]["actual"] == 2 * GiB and "other -> " in r.stderr
    # a command's own option of the same name stays the command's: set --timeout, fake --dir
    r = cli("set", "vm1", "1G", "--wait", "--timeout", "30s")
    assert r.exit_code == ExitCode.OK, r.stderr
    assert cli("status", "--timeout", "soon").exit_code == ExitCode.USAGE


def test_bad_global_option_values(cli: Cli) -> None:
    assert cli("--timeout", "soon", "status").exit_code == ExitCode.USAGE
    assert cli("--qga", "/x.qga", "status").exit_code == ExitCode.USAGE
    assert cli("status", "--format", "yaml").exit_code == ExitCode.USAGE


def test_config_file_vms_and_limits(start: Start, cli: Cli, tmp_path: Path,
                                    fake_dir: Path) -> None:
    start("vm1")
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[defaults]\nmin = "1G"\n\n[vm.db]\nqmp = "{fake_dir}/vm1.qmp"\nmax = "1.5G"\n'
    )
    (tmp_path / "none").mkdir()
    r = cli("--config", str(cfg), "set", "db", "1.8G",
            extra_env={"BALLOONCTL_DIR": str(tmp_path / "none")})
    assert r.exit_code == ExitCode.UNSAFE_TARGET and "maximum" in r.stderr
    r = cli("--config", str(cfg), "set", "db", "900M",
            extra_env={"BALLOONCTL_DIR": str(tmp_path / "none")})
    assert r.exit_code == ExitCode.UNSAFE_TARGET and "floor 1 GiB" in r.stderr
    cfg.write_text("[vm.db\n")
    r = cli("--config", str(cfg), "status")
    assert r.exit_code == ExitCode.USAGE and str(cfg) in r.stderr


def test_fake_refuses_what_it_cannot_serve(start: Start, cli: Cli, fake_dir: Path) -> None:
    r = cli("fake", "--mem", "1", "--dir", str(fake_dir / "x"))
    assert r.exit_code == ExitCode.USAGE
    assert r.stderr.splitlines()[-1].endswith("guest RAM must be at least 64 MiB")
    r = cli("fake", "--dir", "/proc/nope")
    assert r.exit_code == ExitCode.USAGE
    assert r.stderr == "balloonctl: error: --dir /proc/nope: cannot use it: " \
                       "No such file or directory\n"
    r = cli("fake", "--no-driver", "vm9", "--dir", str(fake_dir / "x"))
    assert r.exit_code == ExitCode.USAGE and "no VM named vm9" in r.stderr
    r = cli("fake", "--host-mem", "255M", "--dir", str(fake_dir / "x"))
    assert r.exit_code == ExitCode.USAGE
    assert r.stderr == ("balloonctl: error: cannot simulate that fleet: the simulated host "
                        "needs at least 256 MiB of RAM\n")
    r = cli("fake", "--host-mem", "lots", "--dir", str(fake_dir / "x"))
    assert r.exit_code == ExitCode.USAGE and "invalid size 'lots'" in r.stderr


def test_fake_workloads_are_the_fakes() -> None:
    from balloonctl.cli.fake import Workload
    from balloonctl.fake import WORKLOADS

    assert {w.fake_name() for w in Workload} == {None, *WORKLOADS}


def test_wait_progress_bar_only_on_a_terminal() -> None:
    from balloonctl.cli.set import _Progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    bar = _Progress(["vm1", "vm2"], stream=tty)
    bar.callback("vm1")(2 * GiB, 1 * GiB)
    bar.callback("vm1")(1536 * MiB, 1 * GiB)
    bar.callback("vm2")(1 * GiB, 1 * GiB)
    bar.done()
    last = tty.getvalue().split("\r")[-1]
    assert "vm1 [##########          ] 1.5G->1G" in last
    assert "vm2 [####################] 1G->1G" in last and last.endswith("\n")
    pipe = io.StringIO()
    quiet = _Progress(["vm1"], stream=pipe)
    quiet.callback("vm1")(2 * GiB, 1 * GiB)
    quiet.done()
    assert pipe.getvalue() == ""


@pytest.mark.parametrize("command", ["status", "set", "hint", "stats", "preflight", "watch",
                                     "wave", "fake", "dashboard", "top", "demo", "completion"])
def test_help_shows_no_typer_type_labels(cli: Cli, command: str) -> None:
    r = cli(command, "--help")
    assert r.exit_code == 0 and r.stdout.startswith(f"Usage: balloonctl {command} ")
    for label in ("<list[", "<str>", "<int", "<float", "<path>", "<bool>"):
        assert label not in r.stdout, (label, r.stdout)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status", "-f", "xml"], "'xml' is not one of 'table', 'json', 'ndjson', 'csv'."),
        (["fake", "--vms", "0"], "Input should be greater than or equal to 1"),
        (["fake", "--vms", "257"], "Input should be less than or equal to 256"),
        (["status", "--watch", "--count", "many"], "Input should be an integer, got 'many'"),
        (["wave", "vm1", "--speed", "nan"], "Input should be a finite number, got 'nan'"),
    ],
)
def test_bad_option_values_are_one_line_usage_errors(cli: Cli, args: list[str],
                                                     message: str) -> None:
    r = cli(*args)
    assert r.exit_code == ExitCode.USAGE
    assert message in r.stderr and r.stderr.count("\n") == 1


def test_choices_are_case_insensitive(start: Start, cli: Cli) -> None:
    start("vm1")
    r = cli("status", "--format", "JSON")
    assert r.exit_code == 0 and json.loads(r.stdout)[0]["name"] == "vm1"



# ---- issue 7: commands and options that mean one thing everywhere ---------------------------


def test_hint_with_no_vm_or_no_action_shows_every_vm(start: Start, cli: Cli) -> None:
    start("vm1")
    start("vm2", agent=False)
    for args in ([], ["--all"], ["status"], ["--all", "status"]):
        r = cli("hint", *args)
        assert r.exit_code == ExitCode.OK, (args, r.stderr)
        assert [line.split(":")[0] for line in r.stdout.splitlines()] == ["vm1", "vm2"], args
    r = cli("hint", "on")  # changing it is never "every VM" by default
    assert r.exit_code == ExitCode.USAGE and "--all" in r.stderr
    assert all(not h["hint_enabled"] for h in json.loads(cli("hint", "--json").stdout))


def test_hint_json_is_one_record_per_vm_with_status_keys(start: Start, cli: Cli) -> None:
    start("vm1")
    start("vm2")
    records = json.loads(cli("hint", "--format", "json").stdout)
    assert [r["name"] for r in records] == ["vm1", "vm2"]
    snap = states(cli("status", "--json"))
    for r in records:
        assert set(r) <= set(JSON_KEYS)
        assert all(r[k] == snap[r["name"]][k] for k in r if k != "name")


@pytest.mark.parametrize(("interval", "seconds"), [
    ("2s", 2), ("1m", 60), ("3", 3), ("1500ms", 2), ("0", 0), ("0s", 0), ("off", 0),
    ("OFF", 0),
])
def test_stats_interval_is_a_duration(start: Start, cli: Cli, interval: str,
                                      seconds: int) -> None:
    start("vm1")
    r = cli("stats", "vm1", "-n", interval)
    assert r.exit_code == ExitCode.OK, r.stderr
    assert states(cli("status", "--json"))["vm1"]["polling_interval"] == seconds
    assert ("whole seconds" in r.stderr) == (interval == "1500ms")
    r = cli("stats", "vm1", "--interval", interval, "--json")
    assert json.loads(r.stdout) == [{"name": "vm1", "polling_interval": seconds}]


@pytest.mark.parametrize("interval", ["-1s", "soon", "", "2x"])
def test_stats_interval_refuses_what_is_no_duration(start: Start, cli: Cli,
                                                    interval: str) -> None:
    start("vm1")
    r = cli("stats", "vm1", "--interval", interval)
    assert r.exit_code == ExitCode.USAGE and r.stderr.startswith("balloonctl: error: --interval")
    # the VM keeps the interval it started with (FAST's)
    assert states(cli("status", "--json"))["vm1"]["polling_interval"] == FAST["stats_interval"]


def test_stats_interval_stops_at_qemus_limit(start: Start, cli: Cli) -> None:
    """QEMU takes a polling interval up to UINT32_MAX seconds; one more is the user's mistake
    (exit 2, nothing sent), not QEMU refusing a command (exit 4)."""
    start("vm1")
    ok = cli("stats", "vm1", "--interval", str(2**32 - 1))
    assert ok.exit_code == ExitCode.OK, ok.stderr
    assert states(cli("status", "--json"))["vm1"]["polling_interval"] == 2**32 - 1
    for interval in (str(2**32), "99999999999999999999h"):
        r = cli("stats", "vm1", "--interval", interval)
        assert r.exit_code == ExitCode.USAGE, r.stderr
        assert r.stderr.startswith("balloonctl: error: --interval: ")
        assert "too long" in r.stderr and len(r.stderr.splitlines()) == 1
        assert states(cli("status", "--json"))["vm1"]["polling_interval"] == 2**32 - 1


def test_stats_without_an_option_shows_every_statistic(start: Start, cli: Cli) -> None:
    vm = start("vm1")
    vm.call_threadsafe(setattr, vm.guest, "swap_in", 3 * MiB)
    start("vm2")
    assert cli("stats", "vm1", "--interval", "1").exit_code == 0
    wait_until(lambda: json.loads(cli("stats", "vm1", "--json").stdout)[0]["swap_in"] == 3 * MiB)
    r = cli("stats", "vm1")
    assert r.exit_code == ExitCode.OK
    header, *rows = r.stdout.splitlines()
    assert header.split() == ["NAME", "STAT", "VALUE"]
    table = {row.split()[1]: row.split()[2] for row in rows}
    assert {row.split()[0] for row in rows} == {"vm1"}
    assert table["swap_in"] == "3M" and table["actual"] == "2G"
    assert table["polling_interval"] == "1s"
    for key in ("free_memory", "disk_caches", "available_memory", "total_memory", "swap_out",
                "major_faults", "minor_faults", "last_update", "stats_age", "guest_ram"):
        assert key in table
    # the JSON record is the snapshot's statistics, under the snapshot's keys
    (rec,) = json.loads(cli("stats", "vm1", "--json").stdout)
    snap = states(cli("status", "--json"))["vm1"]
    assert set(rec) <= set(JSON_KEYS) and len(rec) >= 14
    assert all(rec[k] == snap[k] for k in rec if k not in ("stats_age", "last_update"))
    # no VM named: every VM, like status
    assert [r["name"] for r in json.loads(cli("stats", "-f", "json").stdout)] == ["vm1", "vm2"]


def test_set_json_is_one_record_per_vm(start: Start, cli: Cli) -> None:
    vm1 = start("vm1")
    start("vm2")
    r = cli("set", "vm1", "vm2", "1G", "--json")
    assert r.exit_code == ExitCode.OK, r.stderr
    records = json.loads(r.stdout)
    assert [(x["name"], x["target"], x["actual"], x["sent"], x["seconds"]) for x in records] == [
        ("vm1", 1 * GiB, 2 * GiB, True, None), ("vm2", 1 * GiB, 2 * GiB, True, None)]
    r = cli("set", "vm1", "1.5G", "--wait", "-f", "ndjson")
    (rec,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert rec["target"] == 1536 * MiB and abs(rec["actual"] - 1536 * MiB) <= 2 * MiB
    assert isinstance(rec["seconds"], float)
    # --wait ends within CONVERGED_TOLERANCE of the target, and the balloon may take its
    # last step after that: the dry run reads actual once the balloon is at rest there
    wait_until(lambda: vm1.guest.actual == 1536 * MiB)
    r = cli("set", "vm1", "1G", "--dry-run", "--format", "csv")
    assert r.stdout.splitlines() == ["name,target,actual,sent,seconds",
                                     f"vm1,{GiB},{1536 * MiB},false,"]


def test_dash_n_is_the_interval_everywhere(cli: Cli) -> None:
    for command in ("status", "watch", "dashboard", "stats"):
        help_text = cli(command, "--help").stdout
        assert "-n, --interval DURATION" in help_text, command
    assert "-n" not in cli("set", "--help").stdout.replace("-n,", "").split()


def test_set_no_longer_takes_dash_n_for_a_dry_run(start: Start, cli: Cli) -> None:
    start("vm1")
    r = cli("set", "vm1", "1G", "-n")
    assert r.exit_code == ExitCode.USAGE
    assert states(cli("status", "--json"))["vm1"]["target"] is None


def test_one_qmp_vm_needs_no_name(start: Start, cli: Cli, fake_dir: Path) -> None:
    start("vm1")
    start("vm2")
    one = ["--qmp", str(fake_dir / "vm2.qmp")]
    r = cli(*one, "set", "1G", "--wait")
    assert r.exit_code == ExitCode.OK, r.stderr
    assert r.stdout.startswith("vm2: reached 1 GiB")
    assert cli(*one, "hint", "on").stdout.startswith("vm2: hint on")
    assert cli(*one, "stats", "--interval", "5s").stdout == "vm2: guest stats every 5s\n"
    r = cli(*one, "wave", "--min", "1G", "--max", "1.5G", "--period", "1s", "--cycles", "1",
            "--speed", "50", "-f", "ndjson")
    assert r.exit_code == ExitCode.OK and all('"name":"vm2"' in line
                                              for line in r.stdout.splitlines())
    got = states(cli("status", "--json"))
    assert got["vm1"]["target"] is None
    assert got["vm1"]["polling_interval"] == FAST["stats_interval"] != 5  # untouched
    assert got["vm2"]["polling_interval"] == 5 and got["vm2"]["hint_enabled"] is True
    # without the one --qmp, a lone size is still a usage error
    assert cli("set", "1G").exit_code == ExitCode.USAGE
    assert cli("wave", "--period", "1s").exit_code == ExitCode.USAGE


def test_set_on_a_guest_without_its_driver_says_so_at_once(start: Start, cli: Cli) -> None:
    start("vm1", driver=False)
    started = time.monotonic()
    r = cli("set", "vm1", "1G", "--wait", "--timeout", "30s")
    assert time.monotonic() - started < 10  # at once, not after the 30 s wait
    assert r.exit_code == ExitCode.TIMEOUT
    assert r.stderr.startswith("balloonctl: error: vm1: the guest has no balloon driver loaded")
    assert "nothing sent" in r.stderr
    assert states(cli("status", "--json"))["vm1"]["target"] is None
    r = cli("set", "vm1", "1G")  # without --wait: sent, with a warning
    assert r.exit_code == ExitCode.OK
    assert r.stderr.startswith("balloonctl: warning: vm1: the guest has no balloon driver")
    assert states(cli("status", "--json"))["vm1"]["target"] == 1 * GiB


def test_human_lines_never_echo_a_hostile_vm_name_raw(start: Start, cli: Cli) -> None:
    """A socket named with a terminal escape (a VM name from outside): every command's human
    lines show it escaped, as the tables do; JSON keeps the name itself."""
    name = "evil\x1b[31m"
    start(name)
    shown = "evil\\x1b[31m"
    runs = [
        cli("set", "evil*", "1.5G", "--wait"),
        cli("set", "evil*", "1G", "--dry-run"),
        cli("hint", "evil*"),
        cli("stats", "evil*", "--interval", "2"),
        cli("undo", "evil*"),
        cli("set", "evil*", "200M", "--force", "--wait"),
        # below its floor: auto raises it at once, whatever the host
        cli("auto", "evil*", "--cycles", "1", "--interval", "1s"),
    ]
    assert "below its floor 256 MiB: raised to it at once" in runs[-1].stdout
    for r in runs:
        assert r.exit_code == ExitCode.OK, r.stderr
        assert "\x1b" not in r.stdout, r.stdout
        assert r.stdout.startswith(shown) or f"  {shown}: " in r.stdout, r.stdout
    assert [s["name"] for s in json.loads(cli("set", "evil*", "1G", "--json").stdout)] == [name]
