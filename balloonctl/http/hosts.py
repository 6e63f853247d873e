"""``MultiHost``: one ``DataSource`` over several ``balloonctl serve`` instances.

VMs are named ``HOST/VM`` (``model.split_host_name``: the dashboard shows the host in a
column of its own); with a single service they keep their own names. A service that
cannot be reached keeps its VMs' rows, marked unreachable with the reason, until it
answers again; ``host_status`` says, per host, why it is unreachable or what its memory is
(``GET /v1/host``).

``events()`` follows every service's stream (``GET /v1/stream?snapshots=false``) at once:
their events, auto's changes among them, merged as they arrive, each VM named as its row;
each host's latest auto plan is kept for ``auto_plans()``. A stream that fails (a line of
the wrong shape: ``BadReply``) is that host's ``auto_error`` until it is followed again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from balloonctl.errors import BadReply, BalloonError, UnknownVM
from balloonctl.host import HostMemory
from balloonctl.http.client import HttpSource
from balloonctl.http.wire import AutoPlan, auto_enabled_from_json, host_from_json
from balloonctl.model import HOST_SEP, BalloonState, HintState, split_host_name
from balloonctl.policy import Decision
from balloonctl.qmp import BalloonEvent
from balloonctl.units import TargetSpec

__all__ = ["HostStatus", "MultiHost"]


@dataclass(slots=True)
class _Host:
    label: str
    source: HttpSource
    last: list[BalloonState] = field(default_factory=list)
    error: str | None = None
    memory: HostMemory | None = None  # GET /v1/host, when the service reads it
    memory_error: str | None = None
    plan: AutoPlan | None = None  # the last auto cycle its stream announced
    auto_error: str | None = None  # why its stream failed
    auto_bad: bool = False  # ... because it sent something of the wrong shape


@dataclass(frozen=True, slots=True)
class HostStatus:
    """One host as the last poll found it: ``error`` when its service did not answer (its
    VMs' rows are then shown unreachable), else its ``memory`` or why it has none."""

    label: str
    error: str | None = None
    memory: HostMemory | None = None
    memory_error: str | None = None
    auto: bool | None = None  # whether its service applies auto's plan (None: no plan seen)
    auto_error: str | None = None  # its stream failed: no plan, no auto changes logged


# Seconds before following a stream again after it failed or ended (doubling, capped).
FEED_RETRY = 0.5
FEED_RETRY_CAP = 5.0


class MultiHost:
    """Several services as one ``DataSource``; ``hosts`` maps a label to its source."""

    def __init__(self, hosts: Sequence[tuple[str, HttpSource]]) -> None:
        self._hosts = [_Host(label, source) for label, source in hosts]
        self._prefix = len(self._hosts) > 1

    @property
    def labels(self) -> Sequence[str]:
        """The hosts' labels, in order (more than one: rows are named ``HOST/VM``)."""
        return [h.label for h in self._hosts]

    def _name(self, host: _Host, vm: str) -> str:
        return f"{host.label}{HOST_SEP}{vm}" if self._prefix else vm

    @property
    def names(self) -> Sequence[str]:
        return [self._name(h, s.name) for h in self._hosts for s in h.last]

    def _route(self, name: str) -> tuple[_Host, str]:
        if not self._prefix:
            return self._hosts[0], name
        label, vm = split_host_name(name)
        for host in self._hosts:
            if host.label == label:
                return host, vm
        raise UnknownVM(f"no VM named {name!r} (expected HOST/VM)")

    async def _read(self, host: _Host) -> list[BalloonState]:
        try:
            states = await host.source.snapshot()
        except BalloonError as exc:
            host.error, host.memory, host.memory_error = exc.message, None, None
            now = time.time()
            return [s.with_changes(reachable=False, error=f"balloonctl serve unreachable: "
                                   f"{exc.message}", error_kind="ConnectFailed", taken_at=now)
                    for s in host.last]
        host.error = None
        host.last = states
        try:
            host.memory = host_from_json(await host.source.get("/host"))
            host.memory_error = None
        except BalloonError as exc:  # no host files on that host: its VMs still show
            host.memory, host.memory_error = None, exc.message
        return states

    async def snapshot(self) -> list[BalloonState]:
        """Every host's VMs, host by host. Never raises ``BalloonError``."""
        per_host = await asyncio.gather(*(self._read(h) for h in self._hosts))
        return [s.with_changes(name=self._name(h, s.name))
                for h, states in zip(self._hosts, per_host, strict=True) for s in states]

    def host_status(self) -> list[HostStatus]:
        """Each host as the last ``snapshot`` found it, in order."""
        return [HostStatus(h.label, h.error, h.memory, h.memory_error,
                           None if h.plan is None else h.plan.enabled, h.auto_error)
                for h in self._hosts]

    def auto_plans(self) -> dict[str, tuple[Decision, bool]]:
        """Every VM's latest auto decision from its host's stream, by row name, with
        whether its service applies it (hosts without a plan have none)."""
        out: dict[str, tuple[Decision, bool]] = {}
        for host in self._hosts:
            if host.plan is None:
                continue
            for d in host.plan.decisions:
                name = self._name(host, d.name)
                out[name] = (dataclasses.replace(d, name=name), host.plan.enabled)
        return out

    def host_of(self, name: str) -> str:
        """The label of the host a row (``HOST/VM``) is on. Raises: UnknownVM."""
        return self._route(name)[0].label

    async def set_auto(self, label: str, on: bool) -> bool:
        """Switch auto on or off on one host's service (``POST /v1/auto``: every VM of the
        host); whether it is on now.

        Raises: UnknownVM (no such host), Unavailable-coded BalloonError (the service has
        no auto), BadReply, and a connection error."""
        for host in self._hosts:
            if host.label == label:
                enabled = auto_enabled_from_json(await host.source.post("/auto",
                                                                         {"enabled": on}))
                if host.plan is not None:
                    host.plan = dataclasses.replace(host.plan, enabled=enabled)
                return enabled
        raise UnknownVM(f"no host named {label!r}")

    async def reclaim(self, name: str) -> bool:
        """Take a row's VM (``HOST/VM``) back from another writer on its host's service
        (``HttpSource.reclaim``). Raises: UnknownVM, and what the host's service raises."""
        host, vm = self._route(name)
        return await host.source.reclaim(vm)

    async def set_target(self, name: str, spec: TargetSpec, *, force: bool = False) -> int:
        """Raises: UnknownVM, and what the host's service raises."""
        host, vm = self._route(name)
        return await host.source.set_target(vm, spec, force=force, origin="dashboard")

    async def set_hint(self, name: str, on: bool) -> HintState:
        """Raises: UnknownVM, and what the host's service raises."""
        host, vm = self._route(name)
        return await host.source.set_hint(vm, on)

    async def enable_stats(self, name: str, interval: int) -> None:
        """Raises: UnknownVM, and what the host's service raises."""
        host, vm = self._route(name)
        await host.source.enable_stats(vm, interval)

    async def events(self) -> AsyncIterator[tuple[str, BalloonEvent]]:
        """Every host's events as they arrive (VMs named as the rows); never ends and never
        raises ``BalloonError``: a host's stream that fails or ends is followed again."""
        queue: asyncio.Queue[tuple[str, BalloonEvent]] = asyncio.Queue()
        tasks = [asyncio.create_task(self._follow(h, queue)) for h in self._hosts]
        try:
            while True:
                yield await queue.get()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _follow(self, host: _Host,
                      queue: asyncio.Queue[tuple[str, BalloonEvent]]) -> None:
        failures = 0
        while True:
            try:
                async for item in host.source.feed():
                    failures = 0
                    if isinstance(item, AutoPlan) or not host.auto_bad:
                        host.auto_error = None  # a malformed plan stays until a good one
                    if isinstance(item, AutoPlan):
                        host.plan = item
                    else:
                        vm, event = item
                        name = self._name(host, vm)
                        state = event.data.get("state")
                        if isinstance(state, BalloonState):  # a reconnect's fresh state
                            event = BalloonEvent(event.name, {
                                **event.data, "state": state.with_changes(name=name)},
                                event.timestamp)
                        queue.put_nowait((name, event))
            except BalloonError as exc:
                host.auto_error, host.auto_bad = exc.message, isinstance(exc, BadReply)
            host.plan = None  # not current any more: shown as no plan until it is
            failures += 1
            await asyncio.sleep(min(FEED_RETRY_CAP, FEED_RETRY * 2 ** (failures - 1)))

    async def close(self) -> None:
        for host in self._hosts:
            await host.source.close()
