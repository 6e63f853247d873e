"""A fake QEMU 7.2 for tests and demos: QMP and guest-agent sockets over a simulated guest.

    FakeVM          one VM: ``qmp_path``, ``qga_path``, ``guest`` (GuestSim), ``faults``
    FakeFleet       n VMs sharing one timer (the demo fleet, the dashboard benchmark), with a
                    simulated host under ``<dir>/host`` when given ``host_mem``
    HostSim         the simulated host's memory: guests' resident memory, page cache, KSM, PSI
    GuestSim        the simulated guest memory (free, cache, anon, balloon, swap)
    Faults          fault injection switches, settable while the VM runs
    run_in_thread   run a VM or fleet on its own loop in a thread (for CLI tests)
    serve_fleet     serve a fleet until SIGINT/SIGTERM/SIGHUP (``balloonctl fake``, ``python -m
                    balloonctl.fake``); ``run_fleet_forever`` builds the fleet first; such
                    fleets poll guest stats every ``SERVED_STATS_INTERVAL`` (2) seconds
    socket_dir      the directory a fleet serves in: checked before it is created, and
                    removed again (when empty) if the fake made it
    SocketPathTooLong  (an OSError) a socket path longer than AF_UNIX holds (107 bytes)
    SocketInUse     (an OSError) another fake or QEMU already serves a socket path

The fake depends only on ``balloonctl.units`` and ``balloonctl.text``, the wire format and
``balloonctl.host`` (the formats of the files its simulated host writes).
"""

from balloonctl.fake.faults import Faults
from balloonctl.fake.fleet import FakeFleet
from balloonctl.fake.guest import WORKLOADS, GuestSim
from balloonctl.fake.hostsim import HostSim, SimulatedHost
from balloonctl.fake.paths import SOCKET_PATH_MAX, SocketPathTooLong, socket_dir
from balloonctl.fake.runner import (
    SERVED_STATS_INTERVAL,
    run_fleet_forever,
    run_in_thread,
    serve_fleet,
)
from balloonctl.fake.server import SocketInUse
from balloonctl.fake.vm import FakeVM

__all__ = [
    "SERVED_STATS_INTERVAL",
    "SOCKET_PATH_MAX",
    "WORKLOADS",
    "FakeFleet",
    "FakeVM",
    "Faults",
    "GuestSim",
    "HostSim",
    "SimulatedHost",
    "SocketInUse",
    "SocketPathTooLong",
    "run_fleet_forever",
    "run_in_thread",
    "serve_fleet",
    "socket_dir",
]
