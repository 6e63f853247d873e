"""What does one round of the automatic-ballooning policy cost for 1,000 VMs?

``balloonctl.policy.decide`` over 1,000 VM snapshots (a mix of hint on and off, a few
thrashing, stale, foreign and at their floor) on a host that is short of memory, so the
reclaim split runs, against a trivial baseline: a loop that copies each VM's target.
Rounds of both are interleaved so they see the same machine load. Prints the median ms per
round of each (CPU time of the thread, which a busy shared machine does not inflate, and
wall time beside it) and their ratio; the target is at most 10 ms of CPU per policy round.

    python bench/bench_policy.py [--vms 1000] [--rounds 200] [--check]

``--check`` exits 1 when the policy's median is over the target.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from balloonctl.host import HostMemory, Psi
from balloonctl.model import BalloonState, GuestStats, HintMode, HintState
from balloonctl.policy import PolicySettings, VmInput, VmRates, decide
from balloonctl.units import GiB, MiB

TARGET_MS = 10.0
NOW = 1_000_000


def fleet(n: int, seed: int = 8, jitter: int = 0) -> list[VmInput]:
    """``n`` VMs; ``jitter`` moves every guest's free memory by that many pages, as a guest
    under load does between two samples (so no round sees the same numbers as the last)."""
    rng = random.Random(seed)
    vms = []
    for i in range(n):
        ram = rng.choice([1, 2, 4, 8]) * GiB
        actual = ram - rng.randrange(0, ram // 2, MiB)
        cache = rng.randrange(0, actual // 2, MiB)
        free = rng.randrange(0, max(MiB, actual - cache), MiB) + jitter * 4096
        age = 90 if i % 97 == 0 else 2  # a few stale
        stats = GuestStats(last_update=NOW - age, free_memory=free, disk_caches=cache,
                           available_memory=free + cache, swap_in=0, major_faults=0)
        state = BalloonState(name=f"vm{i}", qmp=f"/run/vm{i}.qmp", reachable=True,
                             actual=actual, guest_ram=ram, target=actual, stats=stats,
                             polling_interval=2,
                             hint=HintState(mode=HintMode.DEVICE, enabled=i % 2 == 0),
                             taken_at=float(NOW))
        rates = VmRates(swap_in=float(4 * MiB if i % 53 == 0 else 0), major_faults=0.0)
        vms.append(VmInput(state, rates=rates, owned=i % 89 != 0))
    return vms


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vms", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()

    fleets = [fleet(args.vms, jitter=k) for k in range(16)]
    vms = fleets[0]
    guest = sum(v.state.actual or 0 for v in vms)
    # a host 10 % short of its target, with some PSI: every VM is judged, many give
    host = HostMemory(total=guest, available=guest // 20, free=0, cached=0, anon=0,
                      swap_total=0, swap_free=0, psi=Psi(2.0, 1.0, 0.5, 0, 0, 0))
    settings = PolicySettings()
    decisions = decide(vms, host, settings)
    moved = sum(1 for d in decisions if d.target is not None)

    policy_ms: list[float] = []
    policy_wall: list[float] = []
    baseline_ms: list[float] = []
    for i in range(args.rounds):
        vms = fleets[i % len(fleets)]
        w0, t0 = time.perf_counter(), time.thread_time()
        decide(vms, host, settings)
        t1, w1 = time.thread_time(), time.perf_counter()
        copied = [v.state.target for v in vms]
        t2 = time.thread_time()
        assert len(copied) == len(vms)
        policy_ms.append((t1 - t0) * 1000)
        policy_wall.append((w1 - w0) * 1000)
        baseline_ms.append((t2 - t1) * 1000)

    policy, baseline = statistics.median(policy_ms), statistics.median(baseline_ms)
    wall = statistics.median(policy_wall)
    print(f"{args.vms} VMs, {args.rounds} rounds, {moved} targets changed per round")
    print(f"policy   (decide)       median {policy:8.3f} ms CPU per round ({wall:.3f} ms wall)")
    print(f"baseline (copy targets) median {baseline:8.3f} ms CPU per round")
    print(f"ratio {policy / max(baseline, 1e-6):.0f}x; target: policy at most {TARGET_MS:g} ms "
          f"per round ({'met' if policy <= TARGET_MS else 'MISSED'})")
    return 1 if args.check and policy > TARGET_MS else 0


if __name__ == "__main__":
    sys.exit(main())
