"""Many VMs at once: concurrency, per-VM failures, reconnects, and a stream of states.

``DataSource`` is what the dashboard and the HTTP server talk to; ``Fleet`` implements it
over QMP.

A QEMU QMP socket serves one client at a time: a second client's connection is accepted
but gets no greeting until the first one leaves. So ``Fleet`` is polite by default
(``hold=False``): every operation opens the VM's socket, does its work and closes it, and
other tools (virsh, libvirt, scripts, another balloonctl) get their turn between polls.
``hold=True`` keeps one connection per VM (reconnecting with capped exponential backoff,
re-reading the full state after each reconnect) and receives QMP events; use it only when
balloonctl is meant to own the VMs' QMP sockets.

What stays fixed while a VM runs (the balloon device's path and properties, guest RAM, the
device features, whether the guest agent allows guest-exec) is learned once per run of the
VM and kept across polite connections (``RunFacts``), so a polite poll costs the
connection, ``query-balloon`` and two ``qom-get``: see ``BalloonClient.run_facts``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, TypeVar

from balloonctl.errors import BalloonError, QMPTimeout, UnknownVM, UsageError
from balloonctl.model import BalloonState, HintState, TargetChange, VmRef
from balloonctl.qmp import BalloonClient, BalloonEvent, RunFacts, Trace
from balloonctl.store import MemoryStore, Store
from balloonctl.units import TargetSpec

__all__ = ["CONNECTED", "DISCONNECTED", "Backoff", "DataSource", "Fleet"]

T = TypeVar("T")

# Events balloonctl itself emits in hold mode (QEMU's are upper-case too; these are not
# QEMU event names). CONNECTED carries the freshly queried state under "state".
CONNECTED: Final = "BALLOONCTL_CONNECTED"
DISCONNECTED: Final = "BALLOONCTL_DISCONNECTED"

EVENT_QUEUE: Final = 1024


class DataSource(Protocol):
    """What the dashboard (and the HTTP server) need from a set of VMs."""

    @property
    def names(self) -> Sequence[str]: ...

    async def snapshot(self) -> list[BalloonState]: ...

    async def set_target(self, name: str, spec: TargetSpec, *, force: bool = False) -> int: ...

    async def set_hint(self, name: str, on: bool) -> HintState: ...

    async def enable_stats(self, name: str, interval: int) -> None: ...

    def events(self) -> AsyncIterator[tuple[str, BalloonEvent]]: ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class Backoff:
    """Capped exponential backoff between reconnect attempts to one VM."""

    initial: float = 0.5
    cap: float = 30.0
    delay: float = 0.0
    not_before: float = 0.0  # loop time before which no attempt is made

    def failed(self, now: float) -> None:
        self.delay = self.initial if self.delay == 0 else min(self.cap, self.delay * 2)
        self.not_before = now + self.delay

    def succeeded(self) -> None:
        self.delay = 0.0
        self.not_before = 0.0

    def wait(self, now: float) -> float:
        return max(0.0, self.not_before - now)


class Fleet(DataSource):
    """A set of VMs, reached over QMP. See the module docstring for ``hold``.

    ``concurrency`` bounds how many VMs are worked on at once; a slow VM is bounded by
    ``connect_timeout`` and ``command_timeout`` (and ``run_each``'s ``limit``).
    """

    def __init__(self, refs: Sequence[VmRef], *, store: Store | None = None,
                 hold: bool = False, connect_timeout: float = 3.0,
                 command_timeout: float = 10.0, concurrency: int = 32,
                 trace: Trace | None = None,
                 discover: Callable[[], Iterable[VmRef]] | None = None,
                 recorder: Callable[[TargetChange], None] | None = None) -> None:
        """``discover`` (optional) is asked at the start of every snapshot round for the
        VMs there are now (e.g. a rescan of a directory of sockets); the ones the fleet does
        not know yet join it (``discover_new``). ``recorder`` is given to every client
        (``BalloonClient``): it sees each target sent through the fleet.

        Raises: UsageError: two VMs share a name."""
        self.refs: dict[str, VmRef] = {}
        for ref in refs:
            if ref.name in self.refs:
                raise UsageError(f"two VMs named {ref.name!r} in the inventory")
            self.refs[ref.name] = ref
        self.store: Store = store if store is not None else MemoryStore()
        self.hold = hold
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.concurrency = concurrency
        self.trace = trace
        self.recorder = recorder
        self._sem = asyncio.Semaphore(concurrency)
        self._clients: dict[str, BalloonClient] = {}  # hold mode only
        # Polite mode: what each VM's last connection learned about its current run; a
        # client uses it only after checking it reaches the same run (BalloonClient).
        self._facts: dict[str, RunFacts] = {}
        self._backoff: dict[str, Backoff] = {name: Backoff() for name in self.refs}
        self._last: dict[str, BalloonState] = {}
        self._reading: dict[str, asyncio.Task[BalloonState]] = {}  # reads under way
        # None marks the end (close()); it is put back for every other consumer.
        self._queue: asyncio.Queue[tuple[str, BalloonEvent] | None] = asyncio.Queue(EVENT_QUEUE)
        self._pumps: dict[str, asyncio.Task[None]] = {}
        self.events_dropped = 0
        self._closed = False
        self.discover = discover
        self._listening = False  # events() has started the per-VM listeners

    @property
    def names(self) -> Sequence[str]:
        return list(self.refs)

    def client(self, name: str) -> BalloonClient:
        """A new (unconnected) client for one VM, sharing the fleet's store and settings
        and what earlier connections learned about the VM's current run.

        Raises:
            UnknownVM: no VM by that name.
        """
        return BalloonClient.from_ref(self._ref(name), store=self.store,
                                      connect_timeout=self.connect_timeout,
                                      command_timeout=self.command_timeout, trace=self.trace,
                                      facts=self._facts.get(name), recorder=self.recorder)

    def _ref(self, name: str) -> VmRef:
        try:
            return self.refs[name]
        except KeyError:
            known = ", ".join(self.refs) or "none"
            raise UnknownVM(f"no VM named {name!r} (known: {known})") from None

    @contextlib.asynccontextmanager
    async def _session(self, name: str) -> AsyncIterator[BalloonClient]:
        if not self.hold:
            client = self.client(name)
            try:
                yield client
            finally:
                facts = client.run_facts()
                if facts is not None:
                    self._facts[name] = facts
                await client.close()
            return
        held = self._clients.get(name)
        if held is None:
            held = self._clients[name] = self.client(name)
        yield held

    async def _run_one(self, name: str, fn: Callable[[BalloonClient], Awaitable[T]],
                       limit: float | None) -> T:
        async with self._sem, self._session(name) as client:
            if limit is None:
                return await fn(client)
            try:
                async with asyncio.timeout(limit):
                    return await fn(client)
            except TimeoutError:
                raise QMPTimeout(f"gave up after {limit:g}s", vm=name) from None

    async def run_each(self, names: Iterable[str] | None,
                       fn: Callable[[BalloonClient], Awaitable[T]], *,
                       limit: float | None = None) -> dict[str, T | BalloonError]:
        """Run ``fn(client)`` on each VM concurrently (at most ``concurrency`` at once).

        Returns each VM's result or its ``BalloonError`` (named with ``vm``), in the order
        of ``names`` (all VMs when None). One VM failing never stops the others;
        ``limit`` (seconds) bounds each VM's whole call.

        Raises:
            UnknownVM: a name is not in the inventory (checked before anything runs).
        """
        chosen = list(self.refs) if names is None else list(names)
        for name in chosen:
            self._ref(name)

        async def guarded(name: str) -> T | BalloonError:
            try:
                return await self._run_one(name, fn, limit)
            except BalloonError as exc:
                return exc.with_vm(name)

        results = await asyncio.gather(*(guarded(name) for name in chosen))
        return dict(zip(chosen, results, strict=True))

    async def _one(self, name: str, fn: Callable[[BalloonClient], Awaitable[T]]) -> T:
        self._ref(name)
        try:
            return await self._run_one(name, fn, None)
        except BalloonError as exc:
            raise exc.with_vm(name) from None

    def discover_new(self) -> list[str]:
        """Add the VMs ``discover`` reports that the fleet does not know yet (a socket that
        appeared in a watched directory); returns their names. A VM whose socket went away
        stays (it shows as unreachable). A failing ``discover`` adds nothing."""
        if self.discover is None or self._closed:
            return []
        try:
            found = list(self.discover())
        except (OSError, BalloonError):  # a directory gone or unreadable: try next round
            return []
        added = [ref for ref in found if ref.name not in self.refs]
        for ref in added:
            self.refs[ref.name] = ref
            self._backoff[ref.name] = Backoff()
            if self._listening:  # hold mode's events() is running: listen to it too
                self._ensure_pump(ref.name)
        return [ref.name for ref in added]

    # ---- DataSource -------------------------------------------------------------------

    def _resting(self, name: str, now: float) -> BalloonState | None:
        """The VM's last state when it must not be read now: a read of it is still under
        way (its socket serves one client: never pile a second connection on it), or it
        failed lately and is in backoff. None when it should be read."""
        last = self._last.get(name)
        if last is None:
            return None
        task = self._reading.get(name)
        if task is not None and not task.done():
            return last
        if self._backoff[name].wait(now) > 0:
            return last
        return None

    async def _read(self, name: str) -> BalloonState:
        """Read one VM's state (never raises ``BalloonError``), keeping its last state and
        its backoff: an unreachable VM is retried after a delay that doubles up to a cap,
        in both modes, so a dead VM costs one connect timeout per backoff period."""
        loop = asyncio.get_running_loop()
        backoff = self._backoff[name]
        try:
            previous = self._last.get(name)
            state = await self._run_one(name, lambda c: c.snapshot(previous), None)
        except BalloonError as exc:  # only a session failure gets here
            ref = self.refs[name]
            state = BalloonState(name=name, qmp=ref.qmp, error=exc.message,
                                 error_kind=type(exc).__name__)
        if state.reachable:
            backoff.succeeded()
        else:
            backoff.failed(loop.time())
        self._last[name] = state
        return state

    def _start_read(self, name: str) -> asyncio.Task[BalloonState]:
        task = self._reading.get(name)
        if task is None or task.done():
            task = self._reading[name] = asyncio.create_task(self._read(name))
        return task

    async def snapshot(self) -> list[BalloonState]:
        """One ``BalloonState`` per VM, in inventory order. Never raises ``BalloonError``.

        A VM in backoff after a failure (or still being read by an earlier call) is not
        read again; its last state is returned, with the error that caused the backoff.
        VMs that ``discover`` finds are added first.
        """
        self.discover_new()
        now = asyncio.get_running_loop().time()
        pending: dict[str, asyncio.Task[BalloonState]] = {}
        for name in self.refs:
            if self._resting(name, now) is None:
                pending[name] = self._start_read(name)
        if pending:
            await asyncio.wait(pending.values())
        return [pending[name].result() if name in pending else self._last[name]
                for name in self.refs]

    async def snapshot_each(self, patience: float = 1.0) -> AsyncIterator[BalloonState]:
        """Each VM's state as soon as it is read, so one slow or dead VM never holds back
        the others. Never raises ``BalloonError``.

        VMs in backoff, or still being read by an earlier round, yield their last state at
        once. A VM that takes longer than ``patience`` seconds (and has a last state)
        yields that last state; its read goes on in the background and is seen by the
        next round. Reads stay bounded by the connect and command timeouts. VMs that
        ``discover`` finds are added first.
        """
        self.discover_new()
        loop = asyncio.get_running_loop()
        now = loop.time()
        pending: dict[asyncio.Task[BalloonState], str] = {}
        for name in self.refs:
            resting = self._resting(name, now)
            if resting is not None:
                yield resting
            else:
                pending[self._start_read(name)] = name
        deadline = now + patience
        while pending:
            # Wait past the deadline only for VMs that have no last state to show.
            patient = all(n in self._last for n in pending.values())
            timeout = max(0.0, deadline - loop.time()) if patient else None
            done, _ = await asyncio.wait(pending, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if not done:
                for name in pending.values():
                    yield self._last[name]
                return
            for task in done:
                pending.pop(task)
                yield task.result()

    async def stream(self, interval: float) -> AsyncIterator[list[BalloonState]]:
        """Snapshots of every VM, one list every ``interval`` seconds (never raises
        ``BalloonError``). A snapshot slower than the interval is followed immediately.
        """
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            yield await self.snapshot()
            await asyncio.sleep(max(0.0, interval - (loop.time() - started)))

    async def set_target(self, name: str, spec: TargetSpec | int, *, force: bool = False,
                         dry_run: bool = False, record: bool = True) -> int:
        """Set one VM's balloon target (see ``BalloonClient.set_target``).

        Raises:
            UnknownVM, and what ``BalloonClient.set_target`` raises.
        """
        return await self._one(name, lambda c: c.set_target(spec, force=force, dry_run=dry_run,
                                                           record=record))

    async def set_hint(self, name: str, on: bool) -> HintState:
        """Turn one VM's cache-first hint on or off (see ``BalloonClient.set_hint``).

        Raises:
            UnknownVM, and what ``BalloonClient.set_hint`` raises.
        """
        return await self._one(name, lambda c: c.set_hint(on))

    async def enable_stats(self, name: str, interval: int) -> None:
        """Set one VM's guest stats polling interval (0 turns it off).

        Raises:
            UnknownVM, and what ``BalloonClient.enable_stats`` raises.
        """
        await self._one(name, lambda c: c.enable_stats(interval))

    async def events(self) -> AsyncIterator[tuple[str, BalloonEvent]]:
        """``(vm, event)`` pairs from every VM, hold mode only (the polite mode holds no
        connection, so this iterator ends at once). Starts the per-VM listeners; at most
        ``EVENT_QUEUE`` unread events are kept (oldest dropped, counted in
        ``events_dropped``). Besides QEMU's events, ``CONNECTED`` (with the state queried
        right after connecting) and ``DISCONNECTED`` mark connection changes.
        """
        if not self.hold:
            return
        self._listening = True
        for name in self.refs:
            self._ensure_pump(name)
        while not self._closed:
            item = await self._queue.get()
            if item is None:
                self._put(None)
                return
            yield item

    def _ensure_pump(self, name: str) -> None:
        if self.hold and not self._closed and name not in self._pumps:
            self._pumps[name] = asyncio.create_task(self._pump(name), name=f"events:{name}")

    def _emit(self, name: str, event: BalloonEvent) -> None:
        self._put((name, event))

    def _put(self, item: tuple[str, BalloonEvent] | None) -> None:
        while self._queue.full():
            self._queue.get_nowait()
            self.events_dropped += 1
        self._queue.put_nowait(item)

    async def _pump(self, name: str) -> None:
        """Hold mode: keep one VM connected, forwarding its events; back off on failure."""
        loop = asyncio.get_running_loop()
        backoff = self._backoff[name]
        async with self._session(name) as client:
            while not self._closed:
                await asyncio.sleep(backoff.wait(loop.time()))
                # Never trust events alone: re-read everything after each (re)connect.
                state = await client.snapshot()
                self._last[name] = state
                if not state.reachable:
                    backoff.failed(loop.time())
                    continue
                backoff.succeeded()
                self._emit(name, BalloonEvent(CONNECTED, {"state": state}, time.time()))
                reason = "event stream ended"
                try:
                    async for event in client.events():
                        self._emit(name, event)
                except BalloonError as exc:
                    reason = str(exc)
                self._last[name] = self._last[name].with_changes(
                    reachable=False, error=reason, error_kind="Disconnected",
                    taken_at=time.time())
                self._emit(name, BalloonEvent(DISCONNECTED, {"error": reason}, time.time()))
                backoff.failed(loop.time())

    async def close(self) -> None:
        """Stop the event listeners and close held connections (never raises)."""
        self._closed = True
        self._put(None)  # wakes events() consumers
        pumps = list(self._pumps.values())
        self._pumps.clear()
        for task in pumps:
            task.cancel()
        for task in pumps:
            with contextlib.suppress(asyncio.CancelledError, BalloonError):
                await task
        reads = [t for t in self._reading.values() if not t.done()]
        self._reading.clear()
        for read in reads:
            read.cancel()
        for read in reads:
            with contextlib.suppress(asyncio.CancelledError):
                await read
        clients = list(self._clients.values())
        self._clients.clear()
        for client in clients:
            await client.close()

    async def __aenter__(self) -> Fleet:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

