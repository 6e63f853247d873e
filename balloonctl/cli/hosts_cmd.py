"""The dashboard over ``balloonctl serve`` instances, and ``demo --hosts N`` (N simulated
hosts: a fake fleet with a simulated host and an in-process service each, on unix
sockets in a private temporary directory)."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from balloonctl.cli.remote import Endpoint

if TYPE_CHECKING:
    import uvicorn

    from balloonctl.http.hosts import MultiHost
    from balloonctl.journal import Journal
    from balloonctl.model import VmRef
    from balloonctl.serve import HostService

__all__ = [
    "ServedHosts",
    "demo_hinted",
    "demo_host_mem",
    "demo_hosts",
    "multi_host",
    "served_host",
]


def served_host(refs: Sequence[VmRef], *, journal: Journal, host_root: Path, label: str,
                auto_on: bool, cycle: float) -> HostService:
    """A service over ``refs`` as ``balloonctl serve --auto`` builds one (targets journaled
    by the fleet's recorder, auto over the same fleet and journal), for simulated hosts."""
    from balloonctl.auto import AutoController
    from balloonctl.changes import JournalRecorder
    from balloonctl.fleet import Fleet
    from balloonctl.journal import Origin
    from balloonctl.policy import PolicySettings
    from balloonctl.serve import SERVE_REASON, HostService

    fleet = Fleet(refs, hold=True, recorder=JournalRecorder(journal, Origin.SET, SERVE_REASON))
    policy = PolicySettings(cycle=cycle)
    auto = AutoController(fleet, settings=policy, host_root=host_root, journal=journal)
    auto.enabled = None if auto_on else set()
    return HostService(fleet, refs=refs, interval=1.0, host_root=host_root, label=label,
                       journal=journal, policy=policy, auto=auto)


def multi_host(eps: Sequence[Endpoint]) -> MultiHost:
    """One ``DataSource`` over the services ``eps`` (``HOST/VM`` names with several)."""
    from balloonctl.http.hosts import MultiHost

    return MultiHost([(ep.label, ep.source()) for ep in eps])


def demo_host_mem(i: int, *, vms: int, ram: int) -> int:
    """Host ``i``'s RAM (from 1): below its guests' RAM, as ``demo``'s single host, so auto
    reclaims from the first cycles, and different per host (hv1 a half of the guests' RAM,
    hv2 0.55, hv3 0.6, then again)."""
    return vms * ram * (10 + (i - 1) % 3) // 20


def demo_hinted(names: Sequence[str]) -> list[str]:
    """The VMs ``demo`` turns the cache-first hint on for: every other one (vm1, vm3...)."""
    return list(names[::2])


class ServedHosts:
    """``n`` simulated hosts served on a thread of their own: ``endpoints`` once started.
    Each host is smaller than its guests (``demo_host_mem``), its VMs' stats are polled
    every second and half of them have the cache-first hint on (``demo_hinted``), as in
    ``demo``."""

    def __init__(self, root: Path, n: int, *, vms: int, ram: int,
                 workload: str | None) -> None:
        self.root = root
        self.n = n
        self.vms = vms
        self.ram = ram
        self.workload = workload
        self.endpoints: list[Endpoint] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="demo-hosts", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._failure = exc
            self._ready.set()

    async def _main(self) -> None:
        import uvicorn

        from balloonctl.config import scan_dir
        from balloonctl.fake import FakeFleet
        from balloonctl.journal import Journal
        from balloonctl.serve import create_app
        from balloonctl.serve.runner import bind_unix

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        fleets: list[FakeFleet] = []
        servers: list[uvicorn.Server] = []
        tasks: list[asyncio.Task[None]] = []
        services: list[HostService] = []
        try:
            for i in range(1, self.n + 1):
                where = self.root / f"hv{i}"
                host_mem = demo_host_mem(i, vms=self.vms, ram=self.ram)
                fleet = FakeFleet(self.vms, where, ram=self.ram, workload=self.workload,
                                  host_mem=host_mem, seed=100 * i)
                await fleet.start()
                fleets.append(fleet)
                refs = scan_dir(where)
                journal = Journal(self.root / f"journal-hv{i}.jsonl")
                service = served_host(refs, journal=journal, host_root=where / "host",
                                      label=f"hv{i}", auto_on=True, cycle=2.0)
                sock_path = self.root / "run" / f"hv{i}.sock"
                sock, temp = bind_unix(sock_path)
                temp.rename(sock_path)
                config = uvicorn.Config(create_app(service), log_level="warning",
                                        access_log=False, lifespan="on",
                                        timeout_graceful_shutdown=2)  # open streams
                server = uvicorn.Server(config)
                servers.append(server)
                tasks.append(asyncio.create_task(server.serve(sockets=[sock])))
                self.endpoints.append(Endpoint(label=f"hv{i}", uds=str(sock_path)))
                await _started(server)  # its service polling: the set-up below is seen
                hinted = demo_hinted(service.names)
                for name in service.names:
                    await service.enable_stats(name, 1)
                    if name in hinted:
                        await service.set_hint(name, True)
                services.append(service)
            await _settled(services)
            self._ready.set()
            await self._stop.wait()
        finally:
            for server in servers:
                server.should_exit = True
            for task in tasks:
                with contextlib.suppress(Exception):
                    await task
            for fleet in fleets:
                await fleet.stop()

    @contextlib.contextmanager
    def running(self, timeout: float = 60.0) -> Iterator[ServedHosts]:
        """Start every host; stop them all on exit.

        Raises:
            TimeoutError: they did not start in time; what starting them raised.
        """
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the simulated hosts did not start within {timeout:g}s")
        if self._failure is not None:
            raise self._failure
        try:
            yield self
        finally:
            if self._loop is not None and self._stop is not None:
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)


async def _started(server: uvicorn.Server, within: float = 30.0) -> None:
    """Until ``server`` has run its lifespan (its service started) and listens.

    Raises:
        TimeoutError: not within ``within`` seconds.
    """
    async with asyncio.timeout(within):
        while not server.started:  # noqa: ASYNC110 - uvicorn sets a flag, no event
            await asyncio.sleep(0.01)


async def _settled(services: Sequence[HostService], within: float = 10.0) -> None:
    """Poll each service until its VMs' stats are reported at the interval just set (none
    ``stale``), so that the first view shows the set-up done, hint and stats included; after
    ``within`` seconds, whatever they show."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    for service in services:
        while any(s.stale for s in await service.poll_once()) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)  # the guests report every second


def demo_hosts(n: int, *, vms: int, ram: int, workload: str | None, once: bool,
               render: Any, open_dashboard: Any) -> list[Any]:
    """Run the multi-host demo: ``render(states)`` with ``once``, else
    ``open_dashboard(source)``. Returns the states shown with ``once``."""
    from balloonctl.store import private_state

    with tempfile.TemporaryDirectory(prefix="balloonctl-hosts-") as tmp, \
            private_state(Path(tmp) / "state.json"), \
            ServedHosts(Path(tmp), n, vms=vms, ram=ram, workload=workload).running() as hosts:
        if once:
            async def read() -> list[Any]:
                source = multi_host(hosts.endpoints)
                try:
                    return await source.snapshot()
                finally:
                    await source.close()

            states = asyncio.run(read())
            render(states)
            return states
        open_dashboard(multi_host(hosts.endpoints))
        return []
