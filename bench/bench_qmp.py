"""What does BalloonClient cost per QMP poll, against a raw asyncio JSON client, on a held
connection and connecting for every poll (what the polite mode pays)?

The fake QEMU runs in a separate process (``python -m balloonctl.fake``, four VMs, no
workload; a QMP socket serves one client at a time, so each series has its own VM). In one
run, interleaved in batches so all see the same machine load:

  held     ``query-balloon`` on a connection kept open: ``BalloonClient.query_actual``
           (vm1) and ``tests/rawqmp.py``'s ``RawQMP`` (vm2)
  connect  a whole connect-per-poll: connect, greeting, ``qmp_capabilities``,
           ``query-balloon``, close; a fresh ``BalloonClient`` (vm3, as the polite
           ``Fleet`` makes one per poll) and a fresh ``RawQMP`` (vm4)

Prints each series' median and p90 wall time and its CPU time per poll in this process,
then the ratios of the medians: BalloonClient against the raw client (target on a held
connection: at most 1.5x), and connect-per-poll against held (the price of polite mode per
VM and poll), each with its spread over the interleaved rounds and the ratio of CPU time.

    python bench/bench_qmp.py [-n 2000] [--connects 400] [--batch 50] [--check]

``--check`` exits 1 when the held ratio is over the target.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from benchlib import fake_qemu, show_spread  # noqa: E402
from rawqmp import RawQMP  # type: ignore[import-not-found]  # noqa: E402

from balloonctl.qmp import BalloonClient  # noqa: E402

TARGET_RATIO = 1.5


def ratio_spread(a: Series, b: Series) -> str:
    """min / median / max over the interleaved rounds of a's median over b's, and the ratio
    of their CPU time per poll (steadier than wall time on a busy machine)."""
    ratios = [x / y for x, y in zip(a.batch_medians, b.batch_medians, strict=True)]
    return (f"per round {show_spread(ratios, '.2f')}; "
            f"CPU {a.cpu_per_poll / b.cpu_per_poll:.2f}x")


@dataclass
class Series:
    """One way of polling: wall time per call, and this process's CPU time per batch."""

    label: str
    call: Callable[[], Awaitable[object]]
    walls: list[float] = field(default_factory=list)
    batch_medians: list[float] = field(default_factory=list)
    cpu: float = 0.0

    async def batch(self, n: int) -> None:
        wall, cpu = time.perf_counter, time.process_time
        cpu0, walls = cpu(), []
        for _ in range(n):
            start = wall()
            await self.call()
            walls.append(wall() - start)
        self.cpu += cpu() - cpu0
        self.walls += walls
        self.batch_medians.append(statistics.median(walls))

    @property
    def cpu_per_poll(self) -> float:
        return self.cpu / len(self.walls)

    @property
    def median(self) -> float:
        return statistics.median(self.walls)

    def line(self) -> str:
        p90 = statistics.quantiles(self.walls, n=10)[-1]
        return (f"  {self.label:<34} median {self.median * 1e6:8.1f} us   p90 {p90 * 1e6:8.1f} us"
                f"   CPU {self.cpu_per_poll * 1e6:7.1f} us per poll")


async def measure(sockets: dict[str, str], n: int, connects: int, batch: int) -> list[Series]:
    held = BalloonClient(sockets["vm1"], name="vm1")
    raw = await RawQMP.open(sockets["vm2"])

    async def client_per_poll() -> None:
        client = BalloonClient(sockets["vm3"], name="vm3")
        try:
            await client.connect()  # greeting and qmp_capabilities
            await client.query_actual()
        finally:
            await client.close()

    async def raw_per_poll() -> None:
        fresh = await RawQMP.open(sockets["vm4"])  # greeting and qmp_capabilities
        try:
            await fresh.execute("query-balloon")
        finally:
            await fresh.close()

    series = [
        Series("held: BalloonClient (qemu.qmp)", held.query_actual),
        Series("held: raw asyncio JSON client", lambda: raw.execute("query-balloon")),
        Series("connect: BalloonClient per poll", client_per_poll),
        Series("connect: raw client per poll", raw_per_poll),
    ]
    rounds = max(1, math.ceil(n / batch))
    per_round = [batch, batch, math.ceil(connects / rounds), math.ceil(connects / rounds)]
    try:
        await held.connect()
        for s, count in zip(series, per_round, strict=True):  # warm up every path
            await s.batch(min(count, 20))
            s.walls.clear()
            s.batch_medians.clear()
            s.cpu = 0.0
        for _ in range(rounds):
            for s, count in zip(series, per_round, strict=True):
                await s.batch(count)
    finally:
        await held.close()
        await raw.close()
    return series


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="held round trips per client")
    parser.add_argument("--connects", type=int, default=400,
                        help="connect-per-poll polls per client (default 400)")
    parser.add_argument("--batch", type=int, default=50, help="held calls per interleaved batch")
    parser.add_argument("--check", action="store_true", help="exit 1 when over the target")
    args = parser.parse_args(argv)
    if min(args.n, args.connects, args.batch) < 1:
        parser.error("-n, --connects and --batch must be at least 1")
    with fake_qemu(4) as fake:
        ours, theirs, ours_each, theirs_each = asyncio.run(
            measure(fake.sockets, args.n, args.connects, args.batch))
    print(f"query-balloon polls, interleaved: {len(ours.walls)} held and "
          f"{len(ours_each.walls)} connect-per-poll per client")
    for s in (ours, theirs, ours_each, theirs_each):
        print(s.line())
    ratio = ours.median / theirs.median
    verdict = "ok" if ratio <= TARGET_RATIO else "OVER TARGET"
    print("ratios of the medians (the same ratio's min / median / max over the interleaved "
          "rounds; the ratio of CPU per poll):")
    print(f"  held: BalloonClient / raw {ratio:.2f}x ({ratio_spread(ours, theirs)}); "
          f"target <= {TARGET_RATIO}x: {verdict}")
    print(f"  connect-per-poll: BalloonClient / raw {ours_each.median / theirs_each.median:.2f}x "
          f"({ratio_spread(ours_each, theirs_each)}); no target")
    print(f"  polite mode's price, connect-per-poll / held: BalloonClient "
          f"{ours_each.median / ours.median:.1f}x ({ratio_spread(ours_each, ours)}), raw "
          f"{theirs_each.median / theirs.median:.1f}x ({ratio_spread(theirs_each, theirs)})")
    if args.check and ratio > TARGET_RATIO:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
