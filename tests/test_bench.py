"""The benchmarks still measure what they say (not how fast: timings are not tests).

A tiny run of each, as a user would start it: the dashboard bench runs the fixed number of
rounds in both phases, the real dashboard writes to its pseudo-terminal and the baseline
writes nothing; the QMP bench prints all four series with the counts asked for; the serve
bench measures the service, its listing and the dashboard through it and over QMP.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"

# "  1 dashboard      2    2.0   73.6   73   3680    6.9   21.7   1.6   49.1 -> 49.8"
PHASE_ROW = re.compile(
    r"^\s*(?P<repeat>\d+) (?P<phase>baseline|dashboard)\s+(?P<rounds>\d+)\s+(?P<wall>[\d.]+)"
    r"\s+(?P<cpu>[\d.]+)\s+(?P<proc>\d+)\s+(?P<per_vm>\d+)\s+(?P<core>[\d.]+)"
    r"\s+(?P<term>[\d.]+)\s+", re.MULTILINE)


def run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_dashboard_bench_runs_fixed_rounds_and_counts_the_terminal() -> None:
    done = run([str(BENCH / "bench_dashboard.py"), "--vms", "3", "--repeats", "2",
                "--warm", "1", "--rounds", "2"], timeout=240)
    assert done.returncode == 0, done.stderr + done.stdout
    rows = [m.groupdict() for m in PHASE_ROW.finditer(done.stdout)]
    # AB then BA: each phase once per repeat, in alternating order.
    assert [(r["repeat"], r["phase"]) for r in rows] == [
        ("1", "baseline"), ("1", "dashboard"), ("2", "dashboard"), ("2", "baseline")]
    assert all(r["rounds"] == "2" for r in rows)
    for r in rows:
        if r["phase"] == "baseline":
            assert float(r["term"]) == 0.0  # no screen: nothing reaches the terminal
        else:
            assert float(r["term"]) > 0.0  # the real App rendered into the pty
    assert "spread over 2 repeats (min / median / max):" in done.stdout
    assert "dashboard above baseline in" in done.stdout


def test_qmp_bench_prints_held_and_connect_per_poll_series() -> None:
    done = run([str(BENCH / "bench_qmp.py"), "-n", "20", "--batch", "10", "--connects", "4"],
               timeout=120)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "20 held and 4 connect-per-poll per client" in done.stdout
    for label in ("held: BalloonClient (qemu.qmp)", "held: raw asyncio JSON client",
                  "connect: BalloonClient per poll", "connect: raw client per poll"):
        assert re.search(rf"{re.escape(label)}\s+median\s+[\d.]+ us", done.stdout), label
    assert "polite mode's price, connect-per-poll / held" in done.stdout


def test_serve_bench_measures_the_service_the_listing_and_both_dashboards() -> None:
    done = run([str(BENCH / "bench_serve.py"), "--vms", "3", "--duration", "3",
                "--requests", "10"], timeout=240)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "serve bench: 3 fake VMs" in done.stdout
    assert re.search(r"serve, no client:\s+[\d.]+% of one core", done.stdout)
    assert re.search(r"GET /v1/vms x10:\s+median [\d.]+ ms, p99 [\d.]+ ms", done.stdout)
    polls = [int(n) for n in re.findall(r"of one core \((\d+) polls\)", done.stdout)]
    assert len(polls) == 2 and all(n >= 1 for n in polls)  # through serve, then over QMP
    assert "dashboard ratio serve/qmp:" in done.stdout


def test_every_bench_starts() -> None:
    """Each bench script gets past its imports and argument parsing (``--help``), also those
    whose real run needs QEMU or libvirtd and so is not run here: a moved name they import
    fails this, not the next person who runs the bench."""
    scripts = sorted(BENCH.glob("bench_*.py"))
    assert len(scripts) >= 9
    for script in scripts:
        done = run([str(script), "--help"], timeout=60)
        assert done.returncode == 0, f"{script.name}: {done.stderr}"
        assert done.stdout.startswith("usage: "), script.name
