"""What the benchmarks share: the fake QEMU in its own process, a process's CPU time from
/proc, and the spread (min / median / max) of repeated measurements.

Not a benchmark itself (``./dev bench`` runs ``bench/bench_*.py`` only).
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class FakeQemu:
    """A running ``python -m balloonctl.fake``: its process id, socket directory and
    each VM's QMP socket path."""

    pid: int
    directory: Path
    sockets: dict[str, str]


@contextlib.contextmanager
def fake_qemu(n_vms: int, *, workload: str = "none", seed: int = 0, mem: str = "2G",
              start_timeout: float = 120.0) -> Iterator[FakeQemu]:
    """Run ``python -m balloonctl.fake`` in its own process until the block ends; yield it
    once every VM serves. Raises TimeoutError when it does not start in time."""
    directory = Path(tempfile.mkdtemp(prefix="bench-fake-", dir="/tmp"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "balloonctl.fake", "--vms", str(n_vms), "--mem", mem,
         "--dir", str(directory), "--workload", workload, "--seed", str(seed)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        lines: queue.Queue[str] = queue.Queue()

        # A thread reads the fake's stdout: readline() on a pipe has no timeout of its own.
        def pump() -> None:
            for text in proc.stdout or ():
                lines.put(text)

        threading.Thread(target=pump, daemon=True).start()
        sockets: dict[str, str] = {}
        deadline = time.monotonic() + start_timeout
        while len(sockets) < n_vms:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                err = proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
                raise TimeoutError(f"the fake QEMU did not start in time {err}") from None
            name, _, rest = line.partition(" ")
            fields = dict(f.split("=", 1) for f in rest.split())
            sockets[name] = fields["qmp"]
        yield FakeQemu(proc.pid, directory, sockets)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(directory, ignore_errors=True)


def proc_cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a live process has used so far, from
    ``/proc/PID/stat`` (fields 14 and 15; resolution one clock tick, usually 10 ms)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()  # the name in brackets may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(min, median, max) of repeated measurements."""
    return min(values), statistics.median(values), max(values)


def show_spread(values: Sequence[float], fmt: str = ".1f") -> str:
    """``min / median / max`` of ``values``, each formatted with ``fmt``."""
    low, mid, high = spread(values)
    return f"{low:{fmt}} / {mid:{fmt}} / {high:{fmt}}"


def compile_bytecode() -> int:
    """Write the ``.pyc`` files of balloonctl and tui, as ``pip install`` does, so a
    start-up bench measures what an installed balloonctl pays (an editable install with
    ``PYTHONDONTWRITEBYTECODE`` set would recompile every module at every start). Returns
    the number of packages compiled."""
    import compileall
    import importlib.util

    done = 0
    for package in ("balloonctl", "tui"):
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            for where in spec.submodule_search_locations:
                compileall.compile_dir(where, quiet=2, force=False, legacy=False)
            done += 1
    return done


def no_bytecode_env(env: dict[str, str], empty_dir: str) -> dict[str, str]:
    """``env`` in which Python finds no ``.pyc`` and writes none: every module, the standard
    library's too, is compiled from source at each start."""
    return {**env, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": empty_dir}


def timed(argv: Sequence[str], env: dict[str, str], *, check: bool = False) -> float:
    """Seconds one whole process ``argv`` takes, its output discarded (``check``: fail if it
    exits non-zero, within 60 s)."""
    start = time.perf_counter()
    subprocess.run(list(argv), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=check, timeout=60 if check else None)
    return time.perf_counter() - start
