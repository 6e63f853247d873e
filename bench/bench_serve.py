"""Does balloonctl serve stay light with 500 VMs, and does the dashboard get lighter through it?

One run, against one fake fleet (500 fake VMs, compile workload) in its own process:

  serve idle      ``balloonctl serve --interval 1s`` holding every VM, no client: CPU % of one
                  core (target at most 25 %)
  list latency    ``GET /v1/vms`` (all 500 VMs' JSON) over the unix socket, one request after
                  another: median and p99 (target p99 at most 50 ms)
  dashboard/serve the headless dashboard on ``HttpSource`` through the service (and the
                  service's own CPU meanwhile)
  dashboard/qmp   the headless dashboard polling the 500 VMs itself (the service stopped)

    python bench/bench_serve.py [--vms 500] [--duration 30] [--requests 300] [--check]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import fake_qemu, proc_cpu_seconds

TARGET_SERVE_CPU = 25.0  # % of one core
TARGET_P99_MS = 50.0
BALLOONCTL = str(Path(sys.executable).with_name("balloonctl"))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def phase_dashboard(args: argparse.Namespace) -> dict[str, Any]:
    """The headless dashboard for ``args.duration`` seconds, through the service
    (``--sock``) or polling the fake's sockets itself (``--dir``, polite mode): CPU % of one
    core after a warm-up third, and the polls done."""
    from balloonctl.config import scan_dir
    from balloonctl.fleet import DataSource, Fleet
    from balloonctl.http.client import HttpSource
    from tui.app import DashboardApp

    source: DataSource
    if args.sock:
        source = await HttpSource.open(uds=args.sock, timeout=30)
    else:
        source = Fleet(scan_dir(args.dir))
    app = DashboardApp(source, interval=args.interval, close_source=True)
    warm = args.duration / 3
    marks: dict[str, tuple[float, float, int]] = {}

    def mark(name: str) -> None:
        marks[name] = (time.monotonic(), cpu_seconds(), app.polls)

    def finish() -> None:
        mark("end")
        app.exit()

    def started() -> None:
        app.set_timer(warm, lambda: mark("warm"))
        app.set_timer(args.duration, finish)

    app.call_after_refresh(started)
    await app.run_async(headless=True, size=(160, 50))
    (t0, c0, p0), (t1, c1, p1) = marks["warm"], marks["end"]
    return {"cpu_pct": 100 * (c1 - c0) / max(1e-9, t1 - t0), "polls": p1 - p0}


def measure(args: argparse.Namespace, *, sock: Path | None = None,
            directory: Path | None = None) -> dict[str, Any]:
    where = ["--sock", str(sock)] if sock is not None else ["--dir", str(directory)]
    argv = [sys.executable, __file__, "--phase", "dashboard", *where,
            "--duration", str(args.duration), "--interval", str(args.interval)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False,
                          timeout=args.duration + 300)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit("a dashboard phase failed")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def start_serve(directory: Path, sock: Path, interval: float) -> subprocess.Popen[str]:
    env = {**os.environ, "BALLOONCTL_DIR": str(directory), "BALLOONCTL_WELLKNOWN": "",
           "BALLOONCTL_CONFIG": str(directory / "absent.toml"),
           "BALLOONCTL_STATE": str(directory / "state.json"),
           "BALLOONCTL_JOURNAL": str(directory / "journal.jsonl")}
    proc = subprocess.Popen([BALLOONCTL, "serve", "--socket", str(sock), "--interval",
                             f"{interval}s"], env=env, text=True, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not sock.is_socket():
        if proc.poll() is not None:
            raise SystemExit(f"serve exited: {proc.communicate()[1]}")
        if time.monotonic() > deadline:
            raise SystemExit("serve did not start within 120 s")
        time.sleep(0.05)
    return proc


def cpu_share(pid: int, seconds: float) -> float:
    cpu0, t0 = proc_cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return 100 * (proc_cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)


async def latencies(sock: str, n: int) -> list[float]:
    import httpx

    out: list[float] = []
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=sock),
                                 base_url="http://serve", timeout=30) as client:
        for _ in range(n):
            started = time.perf_counter()
            reply = await client.get("/v1/vms")
            reply.raise_for_status()
            out.append(1000 * (time.perf_counter() - started))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=500)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per phase")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--phase", choices=["dashboard"], help=argparse.SUPPRESS)
    parser.add_argument("--sock", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(asyncio.run(phase_dashboard(args))))
        return 0

    results: dict[str, Any] = {}
    with fake_qemu(args.vms, workload="compile") as fake:
        directory = fake.directory
        sock = directory / "run" / "serve.sock"
        serve = start_serve(directory, sock, args.interval)
        try:
            time.sleep(min(10.0, args.duration / 3))  # warm-up: first connects, caches
            results["serve_cpu"] = cpu_share(serve.pid, args.duration)
            cpu0, t0 = proc_cpu_seconds(serve.pid), time.monotonic()
            ms = asyncio.run(latencies(str(sock), args.requests))
            results["serve_cpu_listing"] = 100 * (proc_cpu_seconds(serve.pid) - cpu0) / (
                time.monotonic() - t0)
            results["median_ms"] = statistics.median(ms)
            results["p99_ms"] = statistics.quantiles(ms, n=100)[98]
            cpu0, t0 = proc_cpu_seconds(serve.pid), time.monotonic()
            results["dash_serve"] = measure(args, sock=sock)
            results["serve_cpu_dashboard"] = 100 * (proc_cpu_seconds(serve.pid) - cpu0) / (
                time.monotonic() - t0)
        finally:
            serve.terminate()
            serve.wait(30)
        results["dash_qmp"] = measure(args, directory=directory)

    print(f"serve bench: {args.vms} fake VMs (compile workload), poll every {args.interval:g}s, "
          f"{args.duration:g}s per phase, {os.cpu_count()} CPUs")
    ok_cpu = results["serve_cpu"] <= TARGET_SERVE_CPU
    ok_p99 = results["p99_ms"] <= TARGET_P99_MS
    print(f"serve, no client:        {results['serve_cpu']:5.1f}% of one core "
          f"(target <= {TARGET_SERVE_CPU:g}%) {'ok' if ok_cpu else 'MISSED'}")
    print(f"GET /v1/vms x{args.requests}:     median {results['median_ms']:.1f} ms, "
          f"p99 {results['p99_ms']:.1f} ms (target p99 <= {TARGET_P99_MS:g} ms) "
          f"{'ok' if ok_p99 else 'MISSED'}; serve meanwhile {results['serve_cpu_listing']:.1f}%")
    ds, dq = results["dash_serve"], results["dash_qmp"]
    print(f"dashboard through serve: {ds['cpu_pct']:5.1f}% of one core ({ds['polls']} polls), "
          f"+ serve {results['serve_cpu_dashboard']:.1f}%")
    print(f"dashboard polling QMP:   {dq['cpu_pct']:5.1f}% of one core ({dq['polls']} polls)")
    print(f"dashboard ratio serve/qmp: {ds['cpu_pct'] / max(dq['cpu_pct'], 1e-9):.2f}x")
    return 0 if (ok_cpu and ok_p99) or not args.check else 1


if __name__ == "__main__":
    raise SystemExit(main())
