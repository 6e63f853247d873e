"""``python -m balloonctl.fake --vms N --mem 2G --dir DIR [--host-mem 8G]``: serve a fake fleet
until Ctrl-C, SIGTERM or SIGHUP (exit 0). Without ``--dir``, in a temporary directory that is
removed again when the fleet stops."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from balloonctl.errors import SizeError
from balloonctl.fake.fleet import FakeFleet
from balloonctl.fake.guest import WORKLOADS
from balloonctl.fake.paths import socket_dir
from balloonctl.fake.runner import SERVED_STATS_INTERVAL, apply_faults, serve_fleet
from balloonctl.units import parse_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m balloonctl.fake",
        description="Serve fake QEMU VMs (QMP + guest agent) on unix sockets until Ctrl-C.",
    )
    parser.add_argument("--vms", type=int, default=3, help="number of VMs (default 3)")
    parser.add_argument("--mem", default="2G", help="guest RAM per VM (default 2G)")
    parser.add_argument("--dir", type=Path, default=None, help="socket directory")
    parser.add_argument(
        "--workload",
        default="compile",
        choices=[*WORKLOADS, "none"],
        help="guest workload (default compile)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--fault", action="append", default=[], metavar="[VM=]FAULT",
        help="inject a fault into every VM (or VM): bad-reply:CMD (a malformed reply to CMD, "
             "e.g. bad-reply:query-balloon, bad-reply:qom-get:guest-stats, "
             "bad-reply:guest-info), drop:CMD, garbage:CMD, delay:CMD@SECONDS, never-greet; "
             "repeatable",
    )
    parser.add_argument("--host-mem", default=None,
                        help="simulate a host with this much RAM (figures in DIR/host)")
    parser.add_argument("--qga-no-memory-reclaim", action="store_true",
                        help="guest kernels without cgroup v2 memory.reclaim (before 5.19): "
                             "the cache-first hint falls back to drop_caches")
    parser.add_argument("--qga-no-cgroup2", action="store_true",
                        help="guests without cgroup2 mounted at /sys/fs/cgroup")
    args = parser.parse_args(argv)
    from balloonctl.fake.faults import Faults

    for spec in args.fault:
        try:
            Faults().add(spec.partition("=")[2] if "=" in spec else spec)
        except ValueError as exc:
            parser.error(str(exc))
    try:
        ram = parse_size(args.mem)
        host_mem = None if args.host_mem is None else parse_size(args.host_mem)
    except SizeError as exc:
        parser.error(str(exc))
    if args.vms < 1:
        parser.error("--vms must be at least 1")
    workload = None if args.workload == "none" else args.workload

    def make(where: Path) -> FakeFleet:
        fleet = FakeFleet(args.vms, where, ram=ram, workload=workload, seed=args.seed,
                          host_mem=host_mem,
                          qga_memory_reclaim=not args.qga_no_memory_reclaim,
                          qga_cgroup2=not args.qga_no_cgroup2,
                          stats_interval=SERVED_STATS_INTERVAL)
        apply_faults(fleet, args.fault)
        return fleet

    def ready(fleet: FakeFleet) -> None:
        print(f"balloonctl fake: serving {args.vms} VMs in {fleet.directory} until Ctrl-C",
              file=sys.stderr, flush=True)

    try:
        with socket_dir(args.dir, make) as (_, fleet):
            asyncio.run(serve_fleet(fleet, ready=ready))
    except (OSError, ValueError) as exc:  # as argparse's errors: bad input, exit 2
        print(f"balloonctl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before the fleet's own handler was installed
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
