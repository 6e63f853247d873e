"""``balloonctl experiment wave`` against the real guest, hint off then on, as a user runs it.

The guest (1 GiB) reads /data/big.bin (200 MiB) over and over while its balloon follows a
short wave; each run starts with the guest's page cache dropped. With the cache-first hint
(qga mode here: the guest releases clean page cache before each inflation) the guest must
hold less page cache on average, as in the RFC.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from .qemu import MiB, QemuVM
from .test_real_cli import VM, Cli

pytestmark = pytest.mark.realvm

WORKLOAD = "for i in 1 2 3 4 5 6 7 8 9 10; do cat /data/big.bin >/dev/null; sleep 1; done"


def test_experiment_wave_on_the_real_guest_caches_less_with_the_hint(
    real_vm: QemuVM, tmp_path: Path
) -> None:
    cli = Cli(real_vm, tmp_path)
    result = cli.run("experiment", "wave", VM, "--min", "400M", "--max", "900M",
                     "--period", "12s", "--step", "2s", "--duration", "40s",
                     "--workload", WORKLOAD, "--json", timeout=240)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["experiment"], data["clock"]) == ("wave", "real")
    off, on = data["runs"]
    assert (off["hint"], on["hint"]) == (False, True)
    (vm_off,), (vm_on,) = off["vms"], on["vms"]
    print(f"\nexperiment wave on the real guest: off {vm_off} {off['host']}\n"
          f"on {vm_on} {on['host']}", file=sys.stderr)
    assert vm_off["name"] == vm_on["name"] == VM
    # the workload filled the cache in both runs (it reads 200 MiB again and again)...
    assert vm_off["mean_cached"] > 100 * MiB
    # ...and with the hint the balloon took its pages from the cache first
    assert vm_on["mean_cached"] < vm_off["mean_cached"], (vm_on, vm_off)
    # the wave went between 400M and 900M (the inflations lag a little in real time)
    for vm in (vm_off, vm_on):
        assert 400 * MiB < vm["mean_actual"] < real_vm.ram
        assert vm["run_time"] is not None and vm["run_time"] > 10.0  # ten reads, ten sleeps
    # the experiment put the balloon back where it found it (full RAM) and the hint off
    with real_vm.qmp() as qmp:
        assert qmp.command("query-balloon")["actual"] == real_vm.ram
    assert cli.json("hint", VM, "status")["hint_enabled"] is False
