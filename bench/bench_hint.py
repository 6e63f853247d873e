"""What does the agent-mode cache-first hint add to an inflation, on a real guest?

One real QEMU guest (``scripts/build-guest``, 1 GiB, busybox, Linux 6.1, qemu-ga), booted
once. Each repetition, in rotating order so all see the same machine load, inflates
1 GiB -> 512 MiB three ways, every time from full RAM with ~200 MiB of clean page cache
(a file read in the guest first, through the guest agent, right before):

- raw: a raw asyncio QMP client (``tests/rawqmp.py``): ``balloon``, then ``query-balloon``
  every ``POLL_INTERVAL`` (as balloonctl polls) until ``actual`` is within 2 MiB;
- hint on: what ``balloonctl set VM 512M --wait`` does (a fresh ``BalloonClient`` with a
  state file: connect, ``query-balloon``, ``set_target``, ``wait_for_target``) with the
  agent-mode hint on and ``hint_mount_cgroup`` (method ``reclaim``);
- hint off: the same with the hint off.

Prints the medians, the median of each repetition's ratio to raw (target for hint on: at
most 1.2x) and what the hint's reclaims released.

    python bench/bench_hint.py [-n 7] [--check]

``--check`` exits 1 when hint on is over the target. Needs qemu-system-x86_64 and a
kernel in /boot (see tests/realvm/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from rawqmp import RawQMP  # type: ignore[import-not-found]  # noqa: E402
from realvm.qemu import GuestImage, QemuVM  # type: ignore[import-not-found]  # noqa: E402

from balloonctl.converge import POLL_INTERVAL  # noqa: E402
from balloonctl.model import CONVERGED_TOLERANCE, HintMethod  # noqa: E402
from balloonctl.qmp import BalloonClient  # noqa: E402
from balloonctl.store import FileStore  # noqa: E402
from balloonctl.units import MiB  # noqa: E402

TARGET_RATIO = 1.2
TARGET = 512 * MiB
BIG_FILE = "/data/big.bin"


async def poll_actual(qmp: RawQMP, target: int, tolerance: int) -> None:
    """``query-balloon`` every ``POLL_INTERVAL`` until ``actual`` is within ``tolerance``."""
    while True:
        if abs((await qmp.execute("query-balloon"))["actual"] - target) <= tolerance:
            return
        await asyncio.sleep(POLL_INTERVAL)


async def raw_inflate(vm: QemuVM) -> float:
    start = time.perf_counter()
    qmp = await RawQMP.open(vm.qmp_path)
    try:
        await qmp.execute("balloon", {"value": TARGET})
        await poll_actual(qmp, TARGET, CONVERGED_TOLERANCE)
    finally:
        await qmp.close()
    return time.perf_counter() - start


async def balloonctl_inflate(vm: QemuVM, state: Path) -> float:
    start = time.perf_counter()
    async with BalloonClient(str(vm.qmp_path), name="bench", qga=str(vm.qga_path),
                             store=FileStore(state), hint_mount_cgroup=True) as client:
        await client.query_actual()
        target = await client.set_target(TARGET)
        await client.wait_for_target(target, timeout=60, stall_timeout=15)
    return time.perf_counter() - start


async def set_hint(vm: QemuVM, state: Path, on: bool) -> None:
    async with BalloonClient(str(vm.qmp_path), name="bench", qga=str(vm.qga_path),
                             store=FileStore(state), hint_mount_cgroup=True) as client:
        hint = await client.set_hint(on)
        if on and hint.method is not HintMethod.RECLAIM:
            raise SystemExit(f"expected the reclaim method, got: {hint}")


async def released(vm: QemuVM, state: Path) -> int | None:
    async with BalloonClient(str(vm.qmp_path), name="bench", qga=str(vm.qga_path),
                             store=FileStore(state), hint_mount_cgroup=True) as client:
        return (await client.hint_status()).released


async def prepare(vm: QemuVM) -> None:
    """Full RAM again, and the page cache filled."""
    qmp = await RawQMP.open(vm.qmp_path)
    try:
        await qmp.execute("balloon", {"value": vm.ram})
        await poll_actual(qmp, vm.ram, 0)
    finally:
        await qmp.close()
    await asyncio.to_thread(vm.guest_exec, "sh", "-c", f"cat {BIG_FILE} > /dev/null")
    # No pause: qemu-ga sleeps 100 ms after the cat's session closes, and the hint must
    # not make the inflation wait for that (the balloon goes out once the reclaim's
    # guest-exec is written, not once qemu-ga answers).


async def measure(vm: QemuVM, reps: int, state: Path) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"raw": [], "hint on": [], "hint off": []}
    freed: list[int] = []
    order = list(times)
    for rep in range(reps + 1):  # the first round warms up and is not counted
        for name in order[rep % 3:] + order[:rep % 3]:
            await set_hint(vm, state, name == "hint on")
            await prepare(vm)
            if name == "raw":
                took = await raw_inflate(vm)
            else:
                took = await balloonctl_inflate(vm, state)
            if name == "hint on":
                got = await released(vm, state)
                if got is not None and rep:
                    freed.append(got)
            if rep:
                times[name].append(took)
    await set_hint(vm, state, False)
    await prepare(vm)
    if freed:
        print(f"  hint on: each reclaim released {statistics.median(freed) / MiB:.0f} MiB "
              f"(median; the cache held about 200 MiB, the inflation was 512 MiB)")
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=7, help="repetitions of each (default 7)")
    parser.add_argument("--check", action="store_true", help="exit 1 when over the target")
    parser.add_argument("--guest", type=Path, default=ROOT / ".guest",
                        help="the guest directory (built with scripts/build-guest)")
    args = parser.parse_args(argv)
    if shutil.which("qemu-system-x86_64") is None or not any(Path("/boot").glob("vmlinuz-*")):
        print("bench_hint: skipped (needs qemu-system-x86_64 and a kernel in /boot)")
        return 0
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build-guest"), "--out",
                    str(args.guest)], check=True, capture_output=True)
    vm = QemuVM(GuestImage.from_dir(args.guest.resolve()), name="bench-hint")
    with tempfile.TemporaryDirectory(prefix="bench-hint-") as tmp:
        try:
            vm.start()
            vm.wait_ready()
            print(f"1 GiB -> 512 MiB on a real guest ({vm.accel}), {args.n} repetitions "
                  "each, rotating order")
            times = asyncio.run(measure(vm, args.n, Path(tmp) / "state.json"))
        finally:
            vm.stop()
    raw = times["raw"]
    for name, values in times.items():
        paired = statistics.median(v / r for v, r in zip(values, raw, strict=True))
        print(f"  {name:<8} median {statistics.median(values):6.2f} s  (min {min(values):.2f}, "
              f"max {max(values):.2f})  median ratio to raw {paired:.2f}x")
    ratio = statistics.median(v / r for v, r in zip(times["hint on"], raw, strict=True))
    verdict = "ok" if ratio <= TARGET_RATIO else "OVER TARGET"
    print(f"  hint on / raw: {ratio:.2f}x (target <= {TARGET_RATIO}x): {verdict}")
    if args.check and ratio > TARGET_RATIO:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
