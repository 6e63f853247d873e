"""What does automatic ballooning cost? ``auto`` over 200 fake VMs at one cycle a second.

One run, three processes: the fake fleet (200 fake 2 GiB VMs, compile workload, on a
simulated host with two thirds of their RAM, so the policy has work to do) in its own
process, then two measured phases, each a fresh process against that same fleet:

  baseline   plain polling of the same fleet at the same rate, the same path:
             ``Fleet.snapshot()`` every interval (what the dashboard or ``watch`` costs)
  auto       ``AutoController.run``: the same snapshot, plus reading the host, rates,
             ``decide``, sending the changed targets and journaling them (fsync) every cycle

Each pair runs twice: with the sockets held for the run (``auto --hold``, what a manager
meant to run for long does, as ``balloonctl serve`` does) and polite (``auto``'s default:
every VM reconnected every cycle, so other QMP clients get their turn; the connect and
greeting alone cost about 0.7 ms of CPU per VM and cycle). Each phase measures its own CPU
time (``resource.getrusage``) after a warm-up. Printed: the cycles run, the targets sent, CPU
% of one core for each phase and the ratios. Target: ``auto --hold`` at most 15 % of one
core; the polite figures are printed beside it.

    python bench/bench_auto.py [--vms 200] [--duration 60] [--interval 1] [--check]

``--check`` exits 1 when the target is missed.
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
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TARGET_CPU = 15.0  # % of one core
PHASES = ["baseline-held", "auto-held", "baseline", "auto"]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def warmup_of(duration: float) -> float:
    return min(20.0, duration / 4)


async def phase(name: str, directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    from balloonctl.auto import AutoController, Cycle
    from balloonctl.config import scan_dir
    from balloonctl.fleet import Fleet
    from balloonctl.host import host_root_for
    from balloonctl.journal import Journal
    from balloonctl.policy import PolicySettings
    from balloonctl.store import FileStore

    held = name.endswith("-held")
    fleet = Fleet(scan_dir(directory), store=FileStore(directory / "state.json"), hold=held)
    loop = asyncio.get_running_loop()
    warm = warmup_of(args.duration)
    marks: dict[str, float] = {}
    counts = {"cycles": 0, "sent": 0}

    def tick() -> None:
        counts["cycles"] += 1
        if "cpu" not in marks and loop.time() - start >= warm:
            marks["cpu"], marks["t"], marks["cycles"] = cpu_seconds(), loop.time(), counts[
                "cycles"]

    start = loop.time()
    try:
        if name.startswith("baseline"):
            while loop.time() - start < args.duration:
                began = loop.time()
                await fleet.snapshot()
                tick()
                await asyncio.sleep(max(0.0, args.interval - (loop.time() - began)))
        else:
            auto = AutoController(fleet, settings=PolicySettings(cycle=args.interval),
                                  host_root=host_root_for(directory),
                                  journal=Journal(directory / f"journal-{os.getpid()}.jsonl"))

            def done(cycle: Cycle) -> None:
                counts["sent"] += len(cycle.applied)
                tick()

            await auto.run(done, duration=args.duration)
    finally:
        await fleet.close()
    seconds = loop.time() - marks["t"]
    return {"cycles": counts["cycles"], "sent": counts["sent"],
            "steady_cycles": counts["cycles"] - marks["cycles"],
            "cpu_pct": 100 * (cpu_seconds() - marks["cpu"]) / seconds}


def start_fleet(args: argparse.Namespace, directory: Path) -> subprocess.Popen[str]:
    host = args.vms * 2 * 2 // 3
    fleet = subprocess.Popen(
        [sys.executable, "-m", "balloonctl.fake", "--vms", str(args.vms), "--dir",
         str(directory), "--workload", "compile", "--host-mem", f"{host}G"],
        stdout=subprocess.PIPE, text=True)
    assert fleet.stdout is not None
    for _ in range(args.vms):
        if not fleet.stdout.readline():
            raise SystemExit(f"the fake fleet exited early (status {fleet.wait()})")
    return fleet


def measure(name: str, directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--phase", name, "--dir", str(directory),
            "--duration", str(args.duration), "--interval", str(args.interval)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False,
                          timeout=args.duration + 300)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"phase {name} failed with status {done.returncode}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=200)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per phase")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between cycles")
    parser.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(asyncio.run(phase(args.phase, args.dir, args))))
        return 0

    directory = Path(tempfile.mkdtemp(prefix="ba-", dir="/tmp"))
    fleet = start_fleet(args, directory)
    try:
        # stats every second, as auto would set them (the baseline reads the same stats)
        subprocess.run([sys.executable, "-m", "balloonctl", "--dir", str(directory), "stats",
                        "--all", "--interval", "1"], capture_output=True, check=True,
                       env={**os.environ, "BALLOONCTL_STATE": str(directory / "state.json")},
                       timeout=120)
        time.sleep(2)  # the guests' first reports at the new interval
        results = {name: measure(name, directory, args) for name in PHASES}
    finally:
        fleet.terminate()
        fleet.wait(30)
        shutil.rmtree(directory, ignore_errors=True)

    print(f"auto bench: {args.vms} fake VMs (compile workload) on a simulated host with "
          f"two thirds of their RAM, a cycle every {args.interval:g}s, {args.duration:g}s "
          f"per phase ({warmup_of(args.duration):g}s warm-up), {os.cpu_count()} CPUs")
    print(f"{'phase':<13} {'cycles':>7} {'targets sent':>13} {'CPU% 1 core':>12}")
    for name, r in results.items():
        print(f"{name:<13} {r['cycles']:>7} {r['sent']:>13} {r['cpu_pct']:>11.1f}%")
    for suffix, what in (("-held", "auto --hold"), ("", "auto (polite)")):
        base, auto = results["baseline" + suffix], results["auto" + suffix]
        ratio = auto["cpu_pct"] / base["cpu_pct"] if base["cpu_pct"] > 0 else float("inf")
        print(f"{what}: {ratio:.2f}x its baseline ({auto['cpu_pct'] - base['cpu_pct']:+.1f} "
              "points for the policy, the targets and the journal)")
    held = results["auto-held"]["cpu_pct"]
    ok = held <= TARGET_CPU
    print(f"target auto --hold CPU <= {TARGET_CPU:g}% of one core: {'PASS' if ok else 'FAIL'} "
          f"({held:.1f}%; polite {results['auto']['cpu_pct']:.1f}%)")
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
