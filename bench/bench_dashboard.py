"""Does the dashboard stay light with a big fleet? CPU and memory with 200 VMs polled every second.

One run, three processes: the fake fleet (200 fake VMs, compile workload) in its own process,
then two measured phases, each in a fresh process against that same fleet:

  baseline   the same polling loop without any UI: ``Fleet.snapshot()`` every interval
  dashboard  the Textual dashboard, headless, polling every interval (host memory on)

Each phase samples its own CPU time (``resource.getrusage``) and RSS (``/proc/self/statm``)
every few seconds. Printed: polls done, CPU % of one core, RSS at start and end, and the RSS
slope after warm-up (MiB per minute; flat means no history growth), and the dashboard's
CPU against the baseline. Targets: the dashboard at most 20% of one core, memory flat.

    python bench/bench_dashboard.py [--vms 200] [--duration 60] [--interval 1] [--hold]
                                    [--check]

``--duration 600`` gives the 10-minute figure. ``--check`` exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TARGET_CPU = 20.0  # % of one core
FLAT_SLOPE = 1.0  # MiB per minute after warm-up counts as flat
PAGE = os.sysconf("SC_PAGE_SIZE")


# -- measuring (inside a phase process) -------------------------------------------------------
def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * PAGE


class Sampler:
    """Samples (elapsed, cpu seconds, rss) from a thread, so the loop under test is not
    involved in measuring itself."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.samples: list[tuple[float, float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = 0.0

    def _sample(self) -> None:
        self.samples.append((time.monotonic() - self._t0, cpu_seconds(), rss_bytes()))

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def slope_mib_per_min(points: list[tuple[float, int]]) -> float:
    """Least-squares slope of RSS over time."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_r = sum(r for _, r in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    cov = sum((t - mean_t) * (r - mean_r) for t, r in points)
    return cov / var * 60 / 2**20


def summarise(sampler: Sampler, polls: int, warmup: float) -> dict[str, Any]:
    s = sampler.samples
    t_end, cpu_end, rss_end = s[-1]
    # CPU and slope after warm-up (imports, first connects, caches filling).
    steady = [x for x in s if x[0] >= warmup] or s
    t0, cpu0, rss0 = steady[0]
    return {
        "polls": polls,
        "seconds": round(t_end, 1),
        "cpu_pct": 100 * (cpu_end - cpu0) / max(1e-9, t_end - t0),
        "cpu_pct_all": 100 * (cpu_end - s[0][1]) / max(1e-9, t_end),
        "rss_start": s[0][2],
        "rss_warm": rss0,
        "rss_end": rss_end,
        "slope": slope_mib_per_min([(t, r) for t, _, r in steady]),
        "samples": [(round(t, 1), round(100 * c / max(t, 1e-9), 1), r) for t, c, r in s],
    }


def warmup_of(duration: float) -> float:
    """Seconds excluded from the steady-state figures: a third of the run, at most 60 s."""
    return min(60.0, duration / 3)


def refs_from(lines: list[str]) -> list[Any]:
    from balloonctl.model import VmRef

    refs = []
    for line in lines:
        name, *fields = line.split()
        kv = dict(f.split("=", 1) for f in fields)
        refs.append(VmRef(name=name, qmp=kv["qmp"], qga=kv.get("qga")))
    return refs


async def phase_baseline(refs: list[Any], args: argparse.Namespace,
                         sampler: Sampler) -> int:
    from balloonctl.fleet import Fleet

    polls = 0
    loop = asyncio.get_running_loop()
    async with Fleet(refs, hold=args.hold) as fleet:
        sampler.start()
        end = loop.time() + args.duration
        while loop.time() < end:
            started = loop.time()
            await fleet.snapshot()
            polls += 1
            await asyncio.sleep(max(0.0, args.interval - (loop.time() - started)))
    return polls


async def phase_dashboard(refs: list[Any], args: argparse.Namespace,
                          sampler: Sampler) -> int:
    from balloonctl.fleet import Fleet
    from tui.app import DashboardApp

    app = DashboardApp(Fleet(refs, hold=args.hold), interval=args.interval, close_source=True)

    def started() -> None:
        sampler.start()
        app.set_timer(args.duration, app.exit)

    app.call_after_refresh(started)
    await app.run_async(headless=True, size=(160, 50))
    return app.polls


def run_phase(name: str, args: argparse.Namespace) -> None:
    """Body of a phase process: VM lines on stdin, one JSON summary on stdout."""
    refs = refs_from([line for line in sys.stdin.read().splitlines() if line.strip()])
    sampler = Sampler(every=min(5.0, max(0.5, args.duration / 30)))
    phases: dict[str, Callable[..., Any]] = {
        "baseline": phase_baseline, "dashboard": phase_dashboard,
    }
    polls = asyncio.run(phases[name](refs, args, sampler))
    sampler.stop()
    print(json.dumps(summarise(sampler, polls, warmup=warmup_of(args.duration))))


# -- orchestration (the parent process) -------------------------------------------------------
def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime


def start_fleet(
    args: argparse.Namespace, directory: Path
) -> tuple[subprocess.Popen[str], list[str]]:
    fleet = subprocess.Popen(
        [sys.executable, "-m", "balloonctl.fake", "--vms", str(args.vms), "--dir",
         str(directory), "--workload", "compile"],
        stdout=subprocess.PIPE, text=True,
    )
    assert fleet.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 120
    while len(lines) < args.vms:
        line = fleet.stdout.readline()
        if not line:
            raise SystemExit(f"the fake fleet exited early (status {fleet.wait()})")
        lines.append(line.strip())
        if time.monotonic() > deadline:
            raise SystemExit("the fake fleet did not start within 120 s")
    return fleet, lines


def measure(name: str, args: argparse.Namespace, lines: list[str]) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--phase", name, "--duration", str(args.duration),
            "--interval", str(args.interval)] + (["--hold"] if args.hold else [])
    done = subprocess.run(argv, input="\n".join(lines), capture_output=True, text=True,
                          check=False, timeout=args.duration + 300)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"phase {name} failed with status {done.returncode}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=200)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per phase")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    parser.add_argument("--hold", action="store_true",
                        help="hold the QMP connections (events) instead of the polite mode")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--samples", action="store_true",
                        help="also print the dashboard's RSS samples over time")
    parser.add_argument("--phase", choices=["baseline", "dashboard"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        run_phase(args.phase, args)
        return 0

    directory = Path(tempfile.mkdtemp(prefix="bd-", dir="/tmp"))
    fleet, lines = start_fleet(args, directory)
    try:
        fleet_cpu0, t0 = proc_cpu_seconds(fleet.pid), time.monotonic()
        results = {name: measure(name, args, lines) for name in ("baseline", "dashboard")}
        fleet_cpu = 100 * (proc_cpu_seconds(fleet.pid) - fleet_cpu0) / (time.monotonic() - t0)
    finally:
        fleet.terminate()
        fleet.wait(30)
        shutil.rmtree(directory, ignore_errors=True)

    mode = "hold" if args.hold else "polite"
    print(f"dashboard bench: {args.vms} fake VMs (compile workload), poll every "
          f"{args.interval:g}s, {args.duration:g}s per phase, {mode} mode, "
          f"{os.cpu_count()} CPUs")
    header = (f"{'phase':<10} {'polls':>6} {'CPU% 1 core':>12} {'(incl. start)':>14} "
              f"{'RSS start':>11} {'RSS warm':>11} {'RSS end':>11} {'slope MiB/min':>14}")
    print(header)
    print(f"(CPU% and slope after a {warmup_of(args.duration):g} s warm-up; "
          "'incl. start' counts from the first frame)")
    for name, r in results.items():
        print(f"{name:<10} {r['polls']:>6} {r['cpu_pct']:>11.1f}% {r['cpu_pct_all']:>13.1f}% "
              f"{mib(r['rss_start']):>11} {mib(r['rss_warm']):>11} {mib(r['rss_end']):>11} "
              f"{r['slope']:>+14.2f}")
    base, dash = results["baseline"], results["dashboard"]
    if args.samples:
        print("dashboard samples (seconds, RSS):",
              " ".join(f"{t:g}s:{mib(r)}" for t, _, r in dash["samples"]))
    ui = dash["cpu_pct"] - base["cpu_pct"]
    ratio = dash["cpu_pct"] / base["cpu_pct"] if base["cpu_pct"] > 0 else float("inf")
    print(f"dashboard/baseline CPU: {ratio:.2f}x (the UI itself: {ui:+.1f} points); "
          f"fake fleet process: {fleet_cpu:.1f}% of one core")
    cpu_ok = dash["cpu_pct"] <= TARGET_CPU
    flat_ok = abs(dash["slope"]) <= FLAT_SLOPE
    print(f"target CPU <= {TARGET_CPU:g}% of one core: {'PASS' if cpu_ok else 'FAIL'} "
          f"({dash['cpu_pct']:.1f}%); memory flat (|slope| <= {FLAT_SLOPE:g} MiB/min): "
          f"{'PASS' if flat_ok else 'FAIL'} ({dash['slope']:+.2f})")
    return 1 if args.check and not (cpu_ok and flat_ok) else 0


if __name__ == "__main__":
    sys.exit(main())
