"""What does `balloonctl status --json` cost on a libvirt domain, against `virsh dommemstat`?

Both are whole processes run the way an operator runs them, interleaved so both see the same
machine load: ``balloonctl --libvirt URI status DOMAIN --json`` and
``virsh -c URI dommemstat DOMAIN``. Prints both medians and their ratio (target: at most
1.5x), and, for the split between process start-up and libvirt work, the median of one
``LibvirtClient.snapshot()`` inside a running process.

    python bench/bench_libvirt.py [--domain NAME] [-n 20] [--check]

Without ``--domain`` it boots the test guest (scripts/build-guest, in .guest/) as a
transient TCG domain under qemu:///system and destroys it afterwards (root, libvirtd
running: scripts/start-libvirtd). ``--check`` exits 1 when the ratio is over the target.
"""

from __future__ import annotations

import argparse
import asyncio
import os
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
sys.path.insert(0, str(ROOT / "bench"))

from benchlib import compile_bytecode, timed  # noqa: E402

from balloonctl.libvirt import LibvirtClient  # noqa: E402

TARGET_RATIO = 1.5



async def in_process(uri: str, domain: str, n: int) -> float:
    times = []
    for _ in range(n):
        client = LibvirtClient(uri, domain)
        started = time.perf_counter()
        state = await client.snapshot()
        times.append(time.perf_counter() - started)
        assert state.reachable, state.error
        await client.close()
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uri", default="qemu:///system")
    parser.add_argument("--domain", help="an existing running domain (default: boot one)")
    parser.add_argument("-n", type=int, default=20, help="runs of each (default 20)")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()

    booted = None
    domain = args.domain
    if domain is None:
        from reallibvirt.conftest import start_domain  # type: ignore[import-not-found]
        from realvm.qemu import GuestImage  # type: ignore[import-not-found]

        subprocess.run([sys.executable, str(ROOT / "scripts" / "build-guest"), "--out",
                        str(ROOT / ".guest")], check=True, capture_output=True, timeout=600)
        booted = start_domain(GuestImage.from_dir(ROOT / ".guest"), "bench")
        domain = booted.name
    tmp = Path(tempfile.mkdtemp(prefix="bench-libvirt-"))
    env = {**os.environ, "BALLOONCTL_STATE": str(tmp / "state.json"),
           "BALLOONCTL_CONFIG": str(tmp / "absent.toml"), "BALLOONCTL_WELLKNOWN": ""}
    env.pop("BALLOONCTL_DIR", None)
    balloonctl = str(Path(sys.executable).parent / "balloonctl")
    ours = [balloonctl, "--libvirt", args.uri, "status", domain, "--json"]
    theirs = [shutil.which("virsh") or "virsh", "-c", args.uri, "dommemstat", domain]
    floor = [sys.executable, "-c", f"import libvirt; libvirt.open({args.uri!r}).close()"]
    framework = [sys.executable, "-c", "import typer, asyncio"]
    compile_bytecode()  # as pip install does
    try:
        timed(ours, env, check=True)  # warm the page cache for both
        timed(theirs, env, check=True)
        a: list[float] = []
        b: list[float] = []
        c: list[float] = []
        d: list[float] = []
        for _ in range(args.n):
            a.append(timed(ours, env, check=True))
            b.append(timed(theirs, env, check=True))
            c.append(timed(floor, env))
            d.append(timed(framework, env))
        inner = asyncio.run(in_process(args.uri, domain, args.n))
    finally:
        if booted is not None:
            booted.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
    ma, mb = statistics.median(a), statistics.median(b)
    ratio = ma / mb
    print(f"balloonctl status --json: median {ma * 1000:.0f} ms over {args.n} runs")
    print(f"virsh dommemstat:         median {mb * 1000:.0f} ms over {args.n} runs")
    print(f"ratio {ratio:.1f}x (target at most {TARGET_RATIO}x): "
          f"{'ok' if ratio <= TARGET_RATIO else 'MISSED'}")
    mc, md = statistics.median(c), statistics.median(d)
    print(f"python importing libvirt and opening the URI, nothing else: median "
          f"{mc * 1000:.0f} ms ({mc / mb:.1f}x virsh): the floor for any Python client")
    print(f"python importing typer and asyncio, nothing else: median {md * 1000:.0f} ms "
          f"({md / mb:.1f}x virsh): the floor for a typer CLI")
    print(f"of which LibvirtClient.snapshot() in a running process: median "
          f"{inner * 1000:.1f} ms (the rest is process start-up and imports)")
    return 1 if args.check and ratio > TARGET_RATIO else 0


if __name__ == "__main__":
    sys.exit(main())
