"""``MultiHost``: one ``DataSource`` over several ``balloonctl serve`` instances.

VMs are named ``HOST/VM`` (``model.split_host_name``: the dashboard shows the host in a
column of its own); with a single service they keep their own names. A service that
cannot be reached keeps its VMs' rows, marked unreachable with the reason, until it
answers again; ``host_status`` says, per host, why it is unreachable or what its memory is
(``GET /v1/host``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from balloonctl.errors import BalloonError, UnknownVM
from balloonctl.host import HostMemory
from balloonctl.http.client import HttpSource
from balloonctl.http.wire import host_from_json
from balloonctl.model import HOST_SEP, BalloonState, HintState, split_host_name
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


@dataclass(frozen=True, slots=True)
class HostStatus:
    """One host as the last poll found it: ``error`` when its service did not answer (its
    VMs' rows are then shown unreachable), else its ``memory`` or why it has none."""

    label: str
    error: str | None = None
    memory: HostMemory | None = None
    memory_error: str | None = None


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
        return [HostStatus(h.label, h.error, h.memory, h.memory_error) for h in self._hosts]
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
        """No merged event stream: the dashboard polls (snapshots carry every change)."""
        return
        yield

    async def close(self) -> None:
        for host in self._hosts:
            await host.source.close()
