"""What does BalloonClient cost per QMP round trip, against a raw asyncio JSON client?

The fake QEMU runs in a separate process (``python -m balloonctl.fake``, two VMs, no
workload). In one run, interleaved in batches so both see the same machine load, N
``query-balloon`` round trips go through ``BalloonClient.query_actual`` (on vm1) and N
through ``tests/rawqmp.py``'s ``RawQMP`` (on vm2; a QMP socket serves one client at a time).
Prints both medians and their ratio (target: at most 1.5x).

    python bench/bench_qmp.py [-n 2000] [--batch 50] [--check]

``--check`` exits 1 when the ratio is over the target.
"""

from __future__ import annotations

import argparse
import asyncio
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
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from rawqmp import RawQMP  # type: ignore[import-not-found]  # noqa: E402

from balloonctl.qmp import BalloonClient  # noqa: E402

TARGET_RATIO = 1.5


@contextlib.contextmanager
def fake_qemu(n_vms: int, *, start_timeout: float = 15.0) -> Iterator[dict[str, str]]:
    """Run ``python -m balloonctl.fake`` in its own process; yield {vm name: qmp path}."""
    directory = Path(tempfile.mkdtemp(prefix="bq-", dir="/tmp"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "balloonctl.fake", "--vms", str(n_vms), "--mem", "2G",
         "--dir", str(directory), "--workload", "none"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
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
        yield sockets
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(directory, ignore_errors=True)


async def measure(sockets: dict[str, str], n: int, batch: int) -> tuple[list[float], list[float]]:
    client = BalloonClient(sockets["vm1"], name="vm1")
    raw = await RawQMP.open(sockets["vm2"])
    ours: list[float] = []
    theirs: list[float] = []
    clock = time.perf_counter
    try:
        await client.connect()
        for _ in range(50):  # warm up both paths
            await client.query_actual()
            await raw.execute("query-balloon")
        while len(ours) < n:
            for _ in range(batch):
                start = clock()
                await client.query_actual()
                ours.append(clock() - start)
            for _ in range(batch):
                start = clock()
                await raw.execute("query-balloon")
                theirs.append(clock() - start)
    finally:
        await client.close()
        await raw.close()
    return ours, theirs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="round trips per client")
    parser.add_argument("--batch", type=int, default=50, help="calls per interleaved batch")
    parser.add_argument("--check", action="store_true", help="exit 1 when over the target")
    args = parser.parse_args(argv)
    with fake_qemu(2) as sockets:
        ours, theirs = asyncio.run(measure(sockets, args.n, args.batch))
    ours_med = statistics.median(ours)
    raw_med = statistics.median(theirs)
    ratio = ours_med / raw_med
    print(f"query-balloon round trips: {len(ours)} each, interleaved in batches of {args.batch}")
    print(f"  BalloonClient (qemu.qmp) median {ours_med * 1e6:8.1f} us"
          f"   p90 {statistics.quantiles(ours, n=10)[-1] * 1e6:8.1f} us")
    print(f"  raw asyncio JSON client  median {raw_med * 1e6:8.1f} us"
          f"   p90 {statistics.quantiles(theirs, n=10)[-1] * 1e6:8.1f} us")
    verdict = "ok" if ratio <= TARGET_RATIO else "OVER TARGET"
    print(f"  ratio {ratio:.2f}x (target <= {TARGET_RATIO}x): {verdict}")
    if args.check and ratio > TARGET_RATIO:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
