"""The policy's settings in the TOML config: ``[policy]`` and the reserves of ``[vm.NAME]``,
with a clear error naming the setting for every wrong value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from balloonctl.config import Inventory, load_config
from balloonctl.errors import UsageError
from balloonctl.host import HostMemory
from balloonctl.model import BalloonState, GuestStats
from balloonctl.policy import Action, PolicySettings, VmInput, VmPolicy, decide, policy_for
from balloonctl.units import GiB, MiB


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_no_config_gives_the_defaults(tmp_path: Path) -> None:
    cfg = load_config(env={"BALLOONCTL_CONFIG": str(tmp_path / "absent.toml")})
    assert cfg.policy == PolicySettings()
    assert cfg.policy.target_available == 0.15 and cfg.policy.cycle == 10.0


def test_the_defaults_work_on_a_laptop_sized_host() -> None:
    """16 GiB host, two 4 GiB guests with 2 GiB free each, no config."""

    def vm(name: str) -> VmInput:
        stats = GuestStats(last_update=99, free_memory=2 * GiB, available_memory=2 * GiB)
        return VmInput(BalloonState(name=name, qmp="/x", reachable=True, actual=4 * GiB,
                                    guest_ram=4 * GiB, stats=stats, taken_at=100.0))

    def host(available: int) -> HostMemory:
        return HostMemory(total=16 * GiB, available=available, free=0, cached=0, anon=0,
                          swap_total=0, swap_free=0)

    short = decide([vm("a"), vm("b")], host(16 * GiB // 10), PolicySettings())
    # 10 % available, the default target is 15 %: 819 MiB needed, one 128 MiB step each
    assert [d.action for d in short] == [Action.SHRINK, Action.SHRINK]
    assert [d.target for d in short] == [4 * GiB - 128 * MiB] * 2
    fine = decide([vm("a"), vm("b")], host(8 * GiB), PolicySettings())
    assert [d.action for d in fine] == [Action.HOLD, Action.HOLD]  # at guest RAM already


def test_policy_table_and_vm_reserves(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, """
[policy]
target_available = "20%"
hysteresis = 0.1
deadband = 0
max_step = "64M"
cycle = "5s"
stale_after = 20
emergency_free = "32M"
free_reserve = "300M"
cache_reserve = "0"
swap_in_rate = "2M/s"
fault_rate = 50
psi_threshold = "5%"

[vm.web]
qmp = "/run/web.qmp"
min = "1G"
shares = 2000
free_reserve = "512M"
cache_reserve = "64M"

[vm.db]
max = "2G"
"""))
    p = cfg.policy
    assert (p.target_available, p.hysteresis, p.deadband, p.max_step) == (0.2, 0.1, 0, 64 * MiB)
    assert (p.cycle, p.stale_after, p.emergency_free, p.free_reserve) == \
        (5.0, 20.0, 32 * MiB, 300 * MiB)
    assert (p.cache_reserve, p.swap_in_rate, p.fault_rate, p.psi_threshold) == \
        (0, 2 * MiB, 50.0, 5.0)
    assert p.vms == {"web": VmPolicy(free_reserve=512 * MiB, cache_reserve=64 * MiB)}
    inv = Inventory.load(config=cfg.path, env={"BALLOONCTL_WELLKNOWN": ""}, roots=[])
    web = inv.get("web")
    assert policy_for(web, p) == VmPolicy(minimum=1 * GiB, maximum=None, shares=2000,
                                          free_reserve=512 * MiB, cache_reserve=64 * MiB)


BAD = [
    ("[policy]\ntarget_available = 0", "policy.target_available: must be greater than zero"),
    ("[policy]\ntarget_available = 1.5", "policy.target_available: must be below 1"),
    ("[policy]\ntarget_available = nan", "policy.target_available: must be a finite number"),
    ("[policy]\ntarget_available = \"lots\"", "policy.target_available: expected a number"),
    ("[policy]\ntarget_available = true", "policy.target_available: expected a number"),
    ("[policy]\nhysteresis = -0.1", "policy.hysteresis: must be zero or more"),
    ("[policy]\ntarget_available = 0.9\nhysteresis = 0.1", "policy.hysteresis: target_avail"),
    ("[policy]\ndeadband = -1", "policy.deadband: must be zero or more"),
    ("[policy]\ndeadband = \"300M\"\nmax_step = \"256M\"", "policy.deadband (300 MiB) is above"),
    ("[policy]\nmax_step = 0", "policy.max_step: a size must be greater than zero"),
    ("[policy]\nmax_step = true", "policy.max_step: expected a size"),
    ("[policy]\ncycle = \"0s\"", "policy.cycle: invalid duration '0s'"),
    ("[policy]\ncycle = -5", "policy.cycle: must be greater than zero"),
    ("[policy]\ncycle = inf", "policy.cycle: must be a finite number"),
    ("[policy]\nstale_after = [1]", "policy.stale_after: expected a duration"),
    ("[policy]\nemergency_free = \"300M\"", "policy.emergency_free (300 MiB) must be below "
                                            "free_reserve (256 MiB)"),
    ("[policy]\nswap_in_rate = \"fast\"", "policy.swap_in_rate: invalid size 'fast'"),
    ("[policy]\nfault_rate = \"many\"", "policy.fault_rate: expected a number"),
    ("[policy]\nfault_rate = -1", "policy.fault_rate: must be zero or more"),
    ("[policy]\npsi_threshold = 150", "policy.psi_threshold: must be below 100"),
    ("[policy]\nspeed = 3", "policy.speed: unknown setting"),
    ("[policy]\nauto = \"yes\"", "policy.auto: expected true or false, got 'yes'"),
    ("[policy]\nauto = 1", "policy.auto: expected true or false, got 1"),
    ("policy = 3", "[policy] must be a table"),
    ("[vm.web]\nfree_reserve = \"32M\"", "vm.web.free_reserve (32 MiB) must be above "
                                         "emergency_free (64 MiB)"),
    ("[vm.web]\ncache_reserve = -1", "vm.web.cache_reserve: must be zero or more"),
    ("[vm.web]\nfree_reserve = 0", "vm.web.free_reserve: a size must be greater than zero"),
    ("[vm.web]\nmin = \"2G\"\nmax = \"1G\"", "vm.web: min is above max"),
]


@pytest.mark.parametrize(("text", "words"), BAD, ids=[b[1][:40] for b in BAD])
def test_every_wrong_policy_setting_names_itself(tmp_path: Path, text: str, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(UsageError) as err:
        load_config(path)
    assert str(err.value).startswith(f"config {path}: ")
    assert words in str(err.value)


def test_a_bad_policy_setting_stops_a_command_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[policy]\ndeadband = -1\n")
    env = {**os.environ, "BALLOONCTL_WELLKNOWN": "", "BALLOONCTL_DIR": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "balloonctl", "--config", str(path), "status"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2
    assert r.stderr == (f"balloonctl: error: config {path}: policy.deadband: must be zero or "
                        "more, got -1\n")
