"""BalloonClient: one VM's virtio balloon over QMP.

The QMP session under it (timeouts, ``SocketBusy``, reconnects, the one translation of
qemu.qmp's errors, bounded events) is ``balloonctl.qmpsession``; the run of the VM it
reaches and the facts fixed while that lasts are ``balloonctl.runfacts``. This module adds
the balloon: device discovery, guest stats, validated targets, convergence waits and the
one-call ``snapshot``. The client composes two concerns built on top of it, so imported
when a client is made: what balloonctl remembers about the run
(``balloonctl.targets.RememberedTargets``) and the cache-first hint
(``balloonctl.cachefirst.CacheFirst``).

Nothing here builds state from events: ``query-balloon`` is the source of truth.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

from balloonctl import converge
from balloonctl.errors import (
    NoBalloonDevice,
    QMPCommandError,
)
from balloonctl.model import (
    BalloonState,
    DeviceFeatures,
    GuestStats,
    HintState,
    TargetChange,
    VmRef,
    default_floor,
)
from balloonctl.qga import QgaClient
from balloonctl.qmpsession import (
    NO_DEVICE_MESSAGE,
    BalloonEvent,
    BoundedEventListener,
    QmpSession,
    Trace,
)
from balloonctl.replies import (
    balloon_actual,
    base_memory,
    empty,
    guest_stats,
    parse_qmp,
    polling_interval,
    qom_bool,
    qom_list,
)
from balloonctl.runfacts import KnownRun, RunFacts
from balloonctl.snapshots import TARGET_STALE_AFTER, ref_settings, take_snapshot
from balloonctl.store import MemoryStore, Store
from balloonctl.units import TargetSpec

if TYPE_CHECKING:
    from balloonctl.cachefirst import CacheFirst
    from balloonctl.targets import RememberedTargets

__all__ = [
    "BALLOON_TYPES",
    "BalloonClient",
    "BalloonEvent",
    "BoundedEventListener",
    "RunFacts",
    "Trace",
]

T = TypeVar("T")

BALLOON_TYPES: Final = frozenset(
    f"child<{t}>"
    for t in (
        "virtio-balloon-pci",
        "virtio-balloon-pci-transitional",
        "virtio-balloon-pci-non-transitional",
        "virtio-balloon-ccw",
        "virtio-balloon-device",
    )
)


class BalloonClient:
    """One VM's balloon over QMP. Connects lazily; reconnects on the call after a drop.

    ``address`` is a unix socket path or ``host:port``; ``qga`` the guest-agent socket (used
    by the cache-first hint, ``cache_first``). ``minimum``/``maximum`` bound targets
    (``default_floor`` when ``minimum`` is None). ``trace`` sees every QMP message sent and
    received.

    ``store`` remembers the last target and the agent-mode hint for this run of the VM
    (``targets``, a ``RememberedTargets``: see it for the rules; ``hint`` is the inventory's
    hint preference for a new run, ``target_stale_after`` when an unreached target stops
    counting). ``hint_mount_cgroup`` lets the agent-mode hint mount cgroup2 in the guest.

    What stays fixed while the VM runs (device path and properties, guest RAM, features, the
    guest agent's answer) is read once per run and kept across reconnects; ``facts`` (from
    another client's ``run_facts()``) seeds it, and is used only once this client's
    connection shows the same run (see ``RunFacts`` and ``instance_id``).

    ``recorder`` sees every target ``set_target`` sent (a ``TargetChange``), after it was
    sent and remembered and before ``set_target`` returns (the CLI journals there; what it
    raises, ``set_target`` raises).
    """

    def __init__(self, address: str, *, name: str | None = None, qga: str | None = None,
                 connect_timeout: float = 3.0, command_timeout: float = 10.0,
                 store: Store | None = None, minimum: int | None = None,
                 maximum: int | None = None, trace: Trace | None = None,
                 hint: bool | None = None, hint_mount_cgroup: bool = False,
                 target_stale_after: float = TARGET_STALE_AFTER,
                 facts: RunFacts | None = None,
                 recorder: Callable[[TargetChange], None] | None = None) -> None:
        # Built on this module, so imported here rather than at the top.
        from balloonctl.cachefirst import CacheFirst
        from balloonctl.targets import RememberedTargets

        self.address = address
        self.name = name or address
        self._vm = name  # errors name the VM only when it has a name of its own
        self.qga = qga
        self.store: Store = store if store is not None else MemoryStore()
        self.minimum = minimum
        self.maximum = maximum
        self.trace = trace
        self.recorder = recorder
        self.hint_mount_cgroup = hint_mount_cgroup
        self.session = QmpSession(address, name=self.name, vm=name,
                                  connect_timeout=connect_timeout,
                                  command_timeout=command_timeout, trace=trace,
                                  on_connect=lambda: self.run.connected())
        self.run = KnownRun(self.session, facts)
        self.targets: RememberedTargets = RememberedTargets(
            self, self.store, hint=hint, stale_after=target_stale_after)
        self.cache_first: CacheFirst = CacheFirst(self, self.targets, vm=name)

    @classmethod
    def from_ref(cls, ref: VmRef, **kw: Any) -> BalloonClient:
        """A client for an inventory entry (name, sockets and limits come from ``ref``)."""
        return cls(ref.qmp, **{**ref_settings(ref), **kw})

    def __repr__(self) -> str:
        return f"<BalloonClient {self.name} {self.address} {self.session.state}>"

    @property
    def connect_timeout(self) -> float:
        return self.session.connect_timeout

    @property
    def command_timeout(self) -> float:
        return self.session.command_timeout

    @property
    def vm(self) -> str | None:
        """The name errors carry: the VM's own name, None when only its address is known."""
        return self._vm

    # ---- connection -------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.session.connected

    async def __aenter__(self) -> BalloonClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect and negotiate, within ``connect_timeout``. No-op when connected.

        Raises:
            ConnectFailed: the socket is missing or refuses, or the handshake failed.
            SocketBusy: the socket accepted but sent no greeting in time (another client).
        """
        await self.session.connect()

    async def close(self) -> None:
        """Disconnect (never raises on a connection that already dropped)."""
        await self.session.close()

    def run_facts(self) -> RunFacts | None:
        """What this client learned about the VM's current run that stays fixed while it
        runs (no I/O); None before it has read the run's identity (``instance_id``).
        Give it to a later client as ``facts=`` to spare it the queries.
        """
        return self.run.facts()

    # ---- commands ---------------------------------------------------------------------

    async def execute(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        """Run one QMP command within ``command_timeout``; connects first when needed.

        Raises:
            ConnectFailed, SocketBusy: (re)connecting failed.
            QMPCommandError: QEMU answered with an error (``sent``/``received`` kept).
            NoBalloonDevice: QEMU answered DeviceNotActive.
            QMPTimeout: no reply in time.
            Disconnected: the connection dropped; the next call reconnects.
        """
        try:
            return await self.session.execute(cmd, args)
        except QMPCommandError as exc:
            if exc.error_class in ("DeviceNotFound", "DeviceNotActive"):
                self.run.forget_device()
            raise

    async def query(self, cmd: str, args: dict[str, Any] | None,
                    parse: Callable[[Any], T]) -> T:
        """Run one QMP command and parse its reply with ``parse`` (a ``balloonctl.replies``
        parser): no other code looks inside QEMU's replies.

        Raises:
            BadReply: the reply has the wrong shape (a VM in the ``error`` state).
            (and what ``execute`` raises)
        """
        return parse_qmp(parse, await self.execute(cmd, args), cmd=cmd, args=args, vm=self._vm)

    async def _qom_get(self, path: str, prop: str, parse: Callable[[Any], T]) -> T:
        return await self.query("qom-get", {"path": path, "property": prop}, parse)

    async def device_path(self) -> str:
        """The balloon device's QOM path (``/machine/peripheral/balloon0`` or an anon one).

        Raises:
            NoBalloonDevice: the VM has no virtio-balloon device.
            (and what ``execute`` raises)
        """
        if self.run.device is not None:
            return self.run.device
        for parent in ("/machine/peripheral", "/machine/peripheral-anon"):
            try:
                children = await self.query("qom-list", {"path": parent}, qom_list)
            except QMPCommandError as exc:
                if exc.error_class == "DeviceNotFound":
                    continue  # no -device with(out) an id at all
                raise
            for child, kind in children.items():
                if kind in BALLOON_TYPES:
                    self.run.device = f"{parent}/{child}"
                    return self.run.device
        raise NoBalloonDevice(NO_DEVICE_MESSAGE, vm=self._vm, error_class="DeviceNotActive")

    async def device_properties(self) -> dict[str, str]:
        """The balloon device's QOM properties (name -> type), read once per run.

        Raises:
            NoBalloonDevice, BadReply, and what ``execute`` raises.
        """
        if self.run.properties is None:
            path = await self.device_path()
            self.run.properties = await self.query("qom-list", {"path": path}, qom_list)
        return self.run.properties

    async def query_actual(self) -> int:
        """Current guest RAM as the balloon leaves it (``query-balloon`` actual), in bytes.

        Raises:
            NoBalloonDevice, BadReply, and what ``execute`` raises.
        """
        return await self.query("query-balloon", None, balloon_actual)

    async def guest_ram(self) -> int:
        """The VM's RAM size (``query-memory-size-summary`` base-memory), in bytes.

        Raises:
            what ``execute`` raises.
        """
        if self.run.guest_ram is None:
            self.run.guest_ram = await self.query("query-memory-size-summary", None,
                                                  base_memory)
        return self.run.guest_ram

    async def features(self) -> DeviceFeatures:
        """The device's fixed properties; ``None`` for any this QEMU does not have.

        Raises:
            NoBalloonDevice, BadReply, and what ``execute`` raises.
        """
        if self.run.features is None:
            path = await self.device_path()
            values: list[bool | None] = []
            for prop in ("deflate-on-oom", "free-page-reporting", "free-page-hint"):
                try:
                    values.append(await self._qom_get(path, prop, qom_bool))
                except QMPCommandError as exc:
                    if exc.error_class in ("DeviceNotFound", "DeviceNotActive"):
                        raise
                    values.append(None)  # older QEMU: no such property
            self.run.features = DeviceFeatures(*values)
        return self.run.features

    async def stats(self) -> GuestStats:
        """The guest's memory stats (``qom-get guest-stats``); unreported values are None.

        Raises:
            NoBalloonDevice, BadReply, and what ``execute`` raises.
        """
        path = await self.device_path()
        return await self._qom_get(path, "guest-stats", guest_stats)

    async def polling_interval(self) -> int:
        """Seconds between guest stats updates; 0 means off.

        Raises:
            NoBalloonDevice, BadReply, and what ``execute`` raises.
        """
        path = await self.device_path()
        return await self._qom_get(path, "guest-stats-polling-interval", polling_interval)

    async def enable_stats(self, interval: int) -> None:
        """Ask the guest to push stats every ``interval`` seconds (0 turns polling off).

        Raises:
            QMPCommandError: QEMU refused the interval (e.g. negative).
            NoBalloonDevice, BadReply, and what ``execute`` raises.
        """
        path = await self.device_path()
        await self.query("qom-set", {"path": path, "property": "guest-stats-polling-interval",
                                     "value": int(interval)}, empty)

    # ---- the run's identity -------------------------------------------------------------

    async def instance_id(self) -> str | None:
        """An identity of the VM instance (one run of QEMU) behind ``address``.

        Made of the host thread id of vCPU 0 (``query-cpus-fast``; a new QEMU process has
        new threads), and for a unix socket the socket file's device, inode and ctime as
        the connection found them (QEMU re-creates the file at every start; the thread id
        covers a file system that reuses the inode within its timestamp granularity). The
        thread id is read once per connection, or taken from ``facts`` of an earlier
        connection that found the same socket file less than ``RUN_RECHECK`` seconds after
        it was read (``run_facts``). A QEMU that reports no thread id over TCP leaves
        nothing to tell runs apart: then only the staleness rule of ``current_target``
        guards the target. None when the unix socket was gone.

        Raises:
            what ``execute`` raises (it connects when needed).
        """
        return await self.run.instance_id()

    # ---- targets ----------------------------------------------------------------------

    def last_target(self) -> int | None:
        """The last target balloonctl set on this VM instance, without I/O; see
        ``RememberedTargets.last_target``."""
        return self.targets.last_target()

    async def current_target(self, *, actual: int | None = None,
                             guest_ram: int | None = None) -> int | None:
        """The target balloonctl set on this VM instance, if it still stands; else None.
        See ``RememberedTargets.current_target``.

        Raises:
            NoBalloonDevice, BadReply, and what ``execute`` raises.
        """
        return await self.targets.current_target(actual=actual, guest_ram=guest_ram)

    def floor(self, guest_ram: int) -> int:
        """The safe floor for this VM: ``minimum`` or ``default_floor(guest_ram)``."""
        return default_floor(guest_ram) if self.minimum is None else self.minimum

    async def resolve_target(self, spec: TargetSpec | int, *, force: bool = False) -> int:
        """Resolve ``spec`` against guest RAM and the current target, and validate it.

        Relative targets count from the last target balloonctl set on this VM instance
        while it stands (``current_target``), else from ``actual``.
        ``force`` allows going below the floor, never below ``HARD_MINIMUM``
        (``RememberedTargets.resolve``).

        Raises:
            SizeError: a relative target would be zero or negative.
            UnsafeTarget: above guest RAM or the maximum, below the floor (or hard minimum).
            NoBalloonDevice, BadReply, and what ``execute`` raises.
        """
        await self.instance_id()  # once per connection; last_target() knows the run after
        return await self.targets.resolve(spec, minimum=self.minimum, maximum=self.maximum,
                                          force=force)

    async def set_target(self, spec: TargetSpec | int, *, force: bool = False,
                         dry_run: bool = False, record: bool = True) -> int:
        """Resolve, validate and send a balloon target; return it in bytes.

        Nothing is sent when the target is unsafe or ``dry_run`` is set. With the
        agent-mode cache-first hint on, an inflation first has the guest reclaim as much clean
        page cache as it needs, alongside the inflation (``CacheFirst.reclaiming``: bounded
        in time; a failure is recorded in the hint state, and the inflation goes on).
        A target sent makes the VM balloonctl's again (a foreign mark is dropped), and goes
        to ``recorder`` unless ``record`` is False (a caller that journals it itself).

        Raises:
            SizeError, UnsafeTarget: see ``resolve_target`` (nothing was sent).
            NoBalloonDevice, BadReply, and what ``execute`` raises.
            what ``recorder`` raises (the target was sent).
        """
        async def send(target: int) -> None:
            await self.query("balloon", {"value": target}, empty)

        # QEMU answers DeviceNotActive to query-balloon when there is no balloon, before
        # the guest agent does any work (converge.send_target reads actual first).
        return await converge.send_target(self, spec, force=force, dry_run=dry_run,
                                          record=record, send=send)

    async def wait_for_target(self, target: int, *,
                              timeout: float = 60.0,  # noqa: ASYNC109 - the contract's API
                              stall_timeout: float = 5.0,
                              progress: Callable[[int, int], None] | None = None) -> int:
        """Poll ``query-balloon`` until ``actual`` is within ``CONVERGED_TOLERANCE`` of target
        (``balloonctl.converge.wait_for_target``).

        ``progress(actual, target)`` is called after every poll. Returns the final actual.
        ``timeout`` replaces the session's overall deadline while it waits (``set --wait``
        waits on top of ``--timeout``); each poll keeps its command timeout.

        Raises:
            DriverNotReady: the guest driver never reported and ``actual`` does not move.
            StuckBalloon: ``actual`` has not moved for ``stall_timeout`` seconds.
            WaitTimeout: not converged within ``timeout`` seconds.
            (and what ``execute`` raises)
        """
        # the wait has its own timeout; the command's budget covered sending the target
        earlier, self.session.deadline = self.session.deadline, None
        try:
            return await converge.wait_for_target(self, target, vm=self._vm, timeout=timeout,
                                                  stall_timeout=stall_timeout,
                                                  progress=progress)
        finally:
            self.session.deadline = earlier

    # ---- cache-first hint (see balloonctl.cachefirst) -----------------------------------

    def qga_client(self, *, timeout: float) -> QgaClient:
        """A new (unconnected) client for this VM's guest agent socket (``qga``, not None),
        each reply awaited at most ``timeout`` seconds."""
        assert self.qga is not None
        return QgaClient(self.qga, timeout=timeout, trace=self.trace,
                         name=f"{self.name}/qga", vm=self._vm)

    async def hint_status(self) -> HintState:
        """How the cache-first hint is honoured on this VM; see ``CacheFirst.status``.

        Raises:
            NoBalloonDevice, BadReply, and what ``execute`` raises.
        """
        return await self.cache_first.status()

    async def set_hint(self, on: bool) -> HintState:
        """Turn the cache-first hint on or off; see ``CacheFirst.set``.

        Raises:
            HintUnsupported: ``on`` and no way to honour it (the message says what would).
            AgentExecBlocked: the guest agent refuses guest-exec.
            NoBalloonDevice, BadReply, and what ``execute`` raises.
        """
        return await self.cache_first.set(on)

    # ---- snapshot and events ----------------------------------------------------------

    async def snapshot(self, previous: BalloonState | None = None) -> BalloonState:
        """Everything about this VM's balloon in one ``BalloonState``. Never raises
        ``BalloonError``: failures become fields (``reachable``, ``error``, ``has_device``).
        ``previous`` (an earlier snapshot of this VM) helps tell another writer's move
        (``RememberedTargets.observe``).
        """

        async def fill(found: dict[str, Any]) -> None:
            # First, so that what an earlier connection to this run learned is used.
            await self.instance_id()
            ram = await self.guest_ram()
            found.update(reachable=True, guest_ram=ram, floor=self.floor(ram), maximum=self.maximum)
            actual = found["actual"] = await self.query_actual()
            await self.device_path()  # once, not by the reads below
            features = found["features"] = await self.features()  # once per run
            seen = None
            if previous is not None and previous.actual is not None:
                seen = (previous.actual, previous.taken_at)
            found["target"], found["owner"] = await self.targets.observe(
                actual=actual, guest_ram=ram, seen=seen,
                deflate_on_oom=features.deflate_on_oom)
            set_at = self.targets.entry(self.run.known_instance_id()).get("target_at")
            if isinstance(set_at, int | float) and not isinstance(set_at, bool):
                found["moved_at"] = float(set_at)  # the balloon moves from when it was set
            found["stats"], found["polling_interval"] = await asyncio.gather(
                self.stats(), self.polling_interval())
            found["hint"] = await self.hint_status()

        return await take_snapshot(self, fill)

    def events(self) -> AsyncIterator[BalloonEvent]:
        """QMP events (BALLOON_CHANGE, SHUTDOWN, ...) as they arrive; notifications only.

        Connects first. Up to ``EVENT_BUFFER`` unread events are kept (oldest dropped).
        Events that arrived before the connection dropped are delivered first.

        The iterator ends quietly when the client is closed.

        Raises:
            Disconnected: the connection dropped (the next call on the client reconnects).
            ConnectFailed, SocketBusy: connecting failed.
        """
        return self.session.events()
