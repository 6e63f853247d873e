"""What does the dashboard's screen cost with a big fleet? CPU per poll round, with and without
the screen, 200 fake VMs polled every second.

Each phase gets a fresh fake fleet (200 VMs, compile workload, the same seed every time) in
its own process, and one measured process in a pseudo-terminal (160x50 by default) whose
output the bench drains and counts:

  dashboard  ``balloonctl dashboard --all --dir DIR`` (the real CLI and Textual App,
             rendering to the pty)
  baseline   the same CLI command, with the App replaced by a loop doing the App's polling
             work through the same path: ``Fleet.snapshot_each()`` (same source, same
             settings, same patience), states collected in the App's batches, the host's
             /proc/meminfo read every interval, the event stream consumed; no screen

Both run a fixed number of poll rounds: warm-up rounds first (imports, first connects,
caches filling), then the measured rounds, between two marks the measured process sends
itself. Measured there: CPU time of the process (``time.process_time``, all threads) per
round and per VM and round, RSS; measured by the bench: the same window's CPU from
/proc/PID/stat (a check), the bytes the terminal received, and the fake fleet's CPU.
The phases alternate (AB BA AB ...) and repeat; printed: each phase, then the spread
(min / median / max) across repeats, and the screen's share (dashboard minus baseline of
the same repeat). Target: the dashboard at most 20 % of one core (median).

    python bench/bench_dashboard.py [--quick] [--vms 200] [--repeats 4] [--warm 10]
        [--rounds 45] [--interval 1] [--hold] [--size 160x50] [--seed 1] [--check]

``--quick`` is 3 repeats of 4 + 10 rounds (about 2 minutes); the default is about 8 minutes.
``--repeats 1 --rounds 600`` gives a ten-minute memory figure (the RSS slope is judged only
over at least 120 s). ``--check`` exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pty
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import termios
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import ROOT, fake_qemu, proc_cpu_seconds, show_spread

TARGET_CPU = 20.0  # % of one core, the dashboard's median
FLAT_SLOPE = 1.0  # MiB per minute of RSS counts as flat
SLOPE_MIN_WINDOW = 120.0  # seconds: shorter windows do not judge the slope
PAGE = os.sysconf("SC_PAGE_SIZE")
PHASES = ("baseline", "dashboard")


# -- inside the measured process ---------------------------------------------------------------
def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * PAGE


class Meter:
    """Counts finished poll rounds; sends a mark to the bench (a JSON line on ``fd``) after
    the warm-up rounds and after the measured rounds, and samples RSS once per round."""

    def __init__(self, fd: int, warm: int, rounds: int) -> None:
        self.fd, self.warm, self.end = fd, warm, warm + rounds
        self.last = -1
        self.rss: list[tuple[float, int]] = []  # (monotonic, RSS) per measured round

    def round_done(self, rounds: int) -> bool:
        """Note that ``rounds`` rounds have finished; True once the measured ones are."""
        if rounds == self.last:
            return False
        self.last = rounds
        if self.warm <= rounds <= self.end:
            self.rss.append((time.monotonic(), rss_bytes()))
        if rounds == self.warm:
            self._mark("start", rounds)
        elif rounds == self.end:
            self._mark("end", rounds)
        return rounds >= self.end

    def _mark(self, what: str, rounds: int) -> None:
        mark = {"mark": what, "round": rounds, "cpu": time.process_time(),
                "t": time.monotonic(), "rss": rss_bytes(),
                "slope": slope_mib_per_min(self.rss) if what == "end" else 0.0}
        os.write(self.fd, (json.dumps(mark) + "\n").encode())


def slope_mib_per_min(points: list[tuple[float, int]]) -> float:
    """Least-squares slope of RSS over time."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / n
    mean_r = sum(r for _, r in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return sum((t - mean_t) * (r - mean_r) for t, r in points) / var * 60 / 2**20


def meter_dashboard(meter: Meter) -> None:
    """Make the CLI's dashboard count its rounds (``polls``: each round's SnapshotReady,
    then one redraw) and quit after the measured ones. The App's method is wrapped in
    place: a subclass defined here would look for its stylesheet next to this file."""
    from tui.app import DashboardApp

    redraw = DashboardApp._redraw

    def metered_redraw(self: DashboardApp) -> None:
        if meter.round_done(self.polls):
            self.exit()
        redraw(self)

    DashboardApp._redraw = metered_redraw  # type: ignore[method-assign]


async def poll_without_screen(source: Any, interval: float, meminfo: Path, meter: Meter,
                              *, batch_delay: float = 0.25,
                              snapshot_timeout: float = 30.0) -> None:
    """The dashboard's workers (tui/app.py ``_poll``, ``_snapshot_round``, ``_host_memory``,
    ``_events``) with the same defaults, every state kept but nothing shown."""
    from balloonctl.errors import HostReadError
    from balloonctl.host import read_meminfo

    loop = asyncio.get_running_loop()
    latest: dict[str, Any] = {}  # each VM's newest state (the App's FleetView keeps more)

    async def host_memory() -> None:
        while True:
            with contextlib.suppress(HostReadError):  # the App shows it; nothing to show here
                await asyncio.to_thread(read_meminfo, meminfo)
            await asyncio.sleep(interval)

    async def events() -> None:
        quiet = 0
        while True:
            try:
                async for name, event in source.events():
                    quiet = 0
                    latest.setdefault(f"event:{name}", event)
            except Exception:
                pass
            quiet += 1  # a polite-mode source ends its stream at once: back off to a minute
            await asyncio.sleep(min(60.0, interval * 2.0 ** (quiet - 1)))

    workers = [asyncio.create_task(host_memory()), asyncio.create_task(events())]
    rounds = 0
    try:
        while True:
            started = loop.time()
            batch: list[Any] = []
            handle: asyncio.TimerHandle | None = None

            def flush() -> None:
                nonlocal handle, batch
                handle = None
                latest.update((state.name, state) for state in batch)
                batch = []

            async with asyncio.timeout(snapshot_timeout):
                async for state in source.snapshot_each():
                    batch.append(state)
                    if handle is None:
                        handle = loop.call_later(batch_delay, flush)
            if handle is not None:
                handle.cancel()
            flush()
            rounds += 1
            if meter.round_done(rounds):
                return
            await asyncio.sleep(max(0.0, interval - (loop.time() - started)))
    finally:
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await source.close()


def meter_baseline(meter: Meter) -> None:
    """Replace the dashboard (``tui.app``, never imported here) by ``poll_without_screen``:
    the CLI still builds the source exactly as for the dashboard."""
    stand_in = types.ModuleType("tui.app")

    def run_dashboard(source: Any, *, interval: float = 1.0,
                      meminfo: Path = Path("/proc/meminfo"), **_screen_options: Any) -> None:
        asyncio.run(poll_without_screen(source, interval, meminfo, meter))

    stand_in.run_dashboard = run_dashboard  # type: ignore[attr-defined]
    stand_in.DashboardApp = None  # type: ignore[attr-defined]  # tui/__init__.py imports it
    sys.modules["tui.app"] = stand_in


def run_measured(args: argparse.Namespace) -> None:
    """Body of the measured process: the ``balloonctl`` CLI with a meter installed."""
    meter = Meter(args.report_fd, args.warm, args.rounds)
    (meter_dashboard if args.phase == "dashboard" else meter_baseline)(meter)
    from balloonctl.__main__ import main

    sys.argv = ["balloonctl", *args.cli]
    main()


# -- the bench (parent) --------------------------------------------------------------------
@dataclass
class Phase:
    name: str
    repeat: int
    marks: dict[str, dict[str, Any]] = field(default_factory=dict)  # start / end

    def delta(self, key: str) -> float:
        return float(self.marks["end"][key] - self.marks["start"][key])

    @property
    def rounds(self) -> int:
        return int(self.delta("round"))

    @property
    def wall(self) -> float:
        return self.delta("t")

    def per_round(self, key: str) -> float:
        return self.delta(key) / self.rounds

    def core_pct(self, key: str = "cpu") -> float:
        return 100 * self.delta(key) / self.wall


def child_env(home: Path) -> dict[str, str]:
    """The environment of the measured process: a terminal, and no config, state or
    well-known socket directories of the user's (only the fake fleet's VMs)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("BALLOONCTL_") and k not in ("COLUMNS", "LINES", "NO_COLOR")}
    env.update(TERM="xterm-256color", XDG_CONFIG_HOME=str(home / "config"),
               XDG_STATE_HOME=str(home / "state"), BALLOONCTL_WELLKNOWN=str(home / "none"))
    return env


def run_phase(name: str, repeat: int, args: argparse.Namespace) -> Phase:
    """One phase: a fresh seeded fake fleet, the measured process in a pty, the marks."""
    phase = Phase(name, repeat)
    cols, rows = args.size
    with fake_qemu(args.vms, workload="compile", seed=args.seed) as fake, \
            tempfile.TemporaryDirectory(prefix="bench-dash-") as home:
        master, slave = pty.openpty()
        termios.tcsetwinsize(slave, (rows, cols))
        report_r, report_w = os.pipe()
        cli = ["--dir", str(fake.directory), "dashboard", "--all",
               "--interval", f"{args.interval:g}s", "--hold" if args.hold else "--polite"]
        argv = [sys.executable, __file__, "--phase", name, "--report-fd", str(report_w),
                "--warm", str(args.warm), "--rounds", str(args.rounds), "--", *cli]
        proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave,
                                pass_fds=(report_w,), start_new_session=True,
                                env=child_env(Path(home)), cwd=ROOT)
        os.close(slave)
        os.close(report_w)
        try:
            received, tail = drain(proc.pid, master, report_r, phase, fake.pid, args)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            os.close(master)
            os.close(report_r)
        phase.marks["exit"] = {"bytes": received}
    if proc.returncode != 0 or set(phase.marks) != {"start", "end", "exit"}:
        shown = tail.decode("utf-8", "replace").encode("unicode_escape").decode()[-2000:]
        raise SystemExit(f"phase {name} failed (status {proc.returncode}); "
                         f"the terminal's last output: {shown}")
    return phase


def drain(pid: int, master: int, report: int, phase: Phase, fleet_pid: int,
          args: argparse.Namespace) -> tuple[int, bytes]:
    """Read the terminal and the marks until the measured process closes both; at each mark
    note the bytes so far and both processes' CPU from /proc. Returns (bytes, last bytes)."""
    deadline = time.monotonic() + (args.warm + args.rounds) * args.interval * 4 + 120
    received, tail, pending = 0, b"", b""
    open_fds = {master, report}

    def read_terminal() -> None:
        nonlocal received, tail
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every holder of the pty's other end has closed it
            chunk = b""
        if not chunk:
            open_fds.discard(master)
        received += len(chunk)
        tail = (tail + chunk)[-8192:]

    while open_fds:
        if time.monotonic() > deadline:
            raise SystemExit(f"phase {phase.name} did not finish in time")
        ready, _, _ = select.select(list(open_fds), [], [], 1.0)
        if report in ready:
            chunk = os.read(report, 4096)
            if not chunk:
                open_fds.discard(report)
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                # What the terminal got before the mark counts before it.
                while master in open_fds and select.select([master], [], [], 0)[0]:
                    read_terminal()
                mark = json.loads(line)
                mark.update(bytes=received, proc_cpu=proc_cpu_seconds(pid),
                            fleet_cpu=proc_cpu_seconds(fleet_pid), parent_t=time.monotonic())
                phase.marks[mark["mark"]] = mark
        if master in ready:
            read_terminal()
    return received, tail


def mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def report(phases: list[Phase], args: argparse.Namespace) -> bool:
    """Print the phases and the spread; True when the targets are met."""
    vms = args.vms
    print(f"{'rep':>3} {'phase':<9} {'rounds':>6} {'wall s':>6} {'CPU ms/round':>12} "
          f"{'/proc':>6} {'us/VM':>6} {'% core':>6} {'term KiB/round':>14} "
          f"{'fleet % core':>12} {'RSS MiB warm->end':>18}")
    for p in phases:
        print(f"{p.repeat:>3} {p.name:<9} {p.rounds:>6} {p.wall:>6.1f} "
              f"{1e3 * p.per_round('cpu'):>12.1f} {1e3 * p.per_round('proc_cpu'):>6.0f} "
              f"{1e6 * p.per_round('cpu') / vms:>6.0f} {p.core_pct():>6.1f} "
              f"{p.per_round('bytes') / 1024:>14.1f} {p.core_pct('fleet_cpu'):>12.1f} "
              f"{mib(p.marks['start']['rss']):>8} -> {mib(p.marks['end']['rss']):<6}")
    by = {name: [p for p in phases if p.name == name] for name in PHASES}
    base, dash = by["baseline"], by["dashboard"]
    print(f"\nspread over {len(dash)} repeats (min / median / max):")
    rows: list[tuple[str, Callable[[Phase], float], str]] = [
        ("CPU ms per round", lambda p: 1e3 * p.per_round("cpu"), ".1f"),
        ("CPU us per VM and round", lambda p: 1e6 * p.per_round("cpu") / vms, ".0f"),
        ("CPU % of one core", lambda p: p.core_pct(), ".1f"),
        ("terminal KiB per round", lambda p: p.per_round("bytes") / 1024, ".1f"),
        ("fake fleet % of one core", lambda p: p.core_pct("fleet_cpu"), ".1f"),
    ]
    for label, fn, fmt in rows:
        print(f"  {label:<25} baseline {show_spread([fn(p) for p in base], fmt):>20}"
              f"   dashboard {show_spread([fn(p) for p in dash], fmt):>20}")
    pairs = list(zip(base, dash, strict=True))
    share = [1e3 * (d.per_round("cpu") - b.per_round("cpu")) for b, d in pairs]
    share_pct = [d.core_pct() - b.core_pct() for b, d in pairs]
    above = sum(1 for s in share if s > 0)
    print(f"  the screen's share (dashboard - baseline, same repeat): "
          f"{show_spread(share)} ms per round, {show_spread(share_pct)} points of a core; "
          f"dashboard above baseline in {above} of {len(share)} repeats")
    dash_pct = [p.core_pct() for p in dash]
    cpu_ok = statistics.median(dash_pct) <= TARGET_CPU
    print(f"target: dashboard <= {TARGET_CPU:g}% of one core (median "
          f"{statistics.median(dash_pct):.1f}%, max {max(dash_pct):.1f}%): "
          f"{'PASS' if cpu_ok else 'FAIL'}")
    window = min(p.wall for p in dash)
    slopes = [p.marks["end"]["slope"] for p in dash]
    if window >= SLOPE_MIN_WINDOW:
        flat_ok = all(abs(s) <= FLAT_SLOPE for s in slopes)
        print(f"memory flat (|RSS slope| <= {FLAT_SLOPE:g} MiB/min over {window:.0f} s): "
              f"{'PASS' if flat_ok else 'FAIL'} ({show_spread(slopes, '+.2f')})")
    else:
        flat_ok = True
        print(f"memory: RSS slope not judged (measured windows of {window:.0f} s; "
              f"needs {SLOPE_MIN_WINDOW:g} s, e.g. --repeats 1 --rounds 600)")
    return cpu_ok and flat_ok


def size(text: str) -> tuple[int, int]:
    cols, _, rows = text.partition("x")
    return int(cols), int(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="3 repeats of 4 warm-up + 10 measured rounds (about 2 minutes)")
    parser.add_argument("--vms", type=int, default=200)
    parser.add_argument("--repeats", type=int, help="phases of each kind (default 4)")
    parser.add_argument("--warm", type=int, help="warm-up rounds per phase (default 10)")
    parser.add_argument("--rounds", type=int, help="measured rounds per phase (default 45)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    parser.add_argument("--hold", action="store_true",
                        help="hold the QMP connections (events) instead of the polite mode")
    parser.add_argument("--size", type=size, default=(160, 50), help="terminal, COLSxROWS")
    parser.add_argument("--seed", type=int, default=1, help="the fake fleet's workload seed")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--report-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("cli", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    quick = (3, 4, 10) if args.quick else (4, 10, 45)
    for key, default in zip(("repeats", "warm", "rounds"), quick, strict=True):
        if getattr(args, key) is None:
            setattr(args, key, default)
    if args.warm < 1 or args.rounds < 1 or args.repeats < 1:
        parser.error("--repeats, --warm and --rounds must be at least 1")
    if args.phase:
        run_measured(args)
        return 0

    mode = "hold" if args.hold else "polite"
    print(f"dashboard bench: {args.vms} fake VMs (compile workload, seed {args.seed}), "
          f"poll every {args.interval:g}s, {mode} mode, terminal {args.size[0]}x{args.size[1]},"
          f" {args.warm} warm-up + {args.rounds} measured rounds per phase, "
          f"{args.repeats} repeats; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} at start", flush=True)
    phases: list[Phase] = []
    for repeat in range(1, args.repeats + 1):
        order = PHASES if repeat % 2 else PHASES[::-1]  # AB BA AB ...: drift hits both
        for name in order:
            phases.append(run_phase(name, repeat, args))
            print(f"  {name} {repeat}/{args.repeats} done", file=sys.stderr, flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end; "
          "CPU: the measured process's time.process_time() (all threads) between the marks; "
          "/proc: the same window from /proc/PID/stat, read by the bench")
    ok = report(phases, args)
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
