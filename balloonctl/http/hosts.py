"""``MultiHost``: one ``DataSource`` over several ``balloonctl serve`` instances.

VMs are named ``HOST/VM`` (the host column of the dashboard's name); with a single service
they keep their own names. A service that cannot be reached keeps its VMs' rows, marked
unreachable with the reason, until it answers again; ``host_lines`` says which hosts are
unreachable (a host never reached has no rows yet).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from balloonctl.errors import BalloonError, UnknownVM
from balloonctl.http.client import HttpSource
from balloonctl.model import BalloonState, HintState
from balloonctl.qmp import BalloonEvent
from balloonctl.text import escape_text
from balloonctl.units import TargetSpec, format_size

__all__ = ["HostTotals", "MultiHost"]

SEP = "/"


@dataclass(slots=True)
class _Host:
    label: str
    source: HttpSource
    last: list[BalloonState] = field(default_factory=list)
    error: str | None = None
    memory: dict[str, Any] | None = None  # GET /v1/host, when the service reads it


@dataclass(frozen=True, slots=True)
class HostTotals:
    """One host's line: its VMs, how many answer, their RAM and what the balloons hold."""

    label: str
    vms: int
    reachable: int
    guest_ram: int
    actual: int
    error: str | None


class MultiHost:
    """Several services as one ``DataSource``; ``hosts`` maps a label to its source."""

    def __init__(self, hosts: Sequence[tuple[str, HttpSource]]) -> None:
        self._hosts = [_Host(label, source) for label, source in hosts]
        self._prefix = len(self._hosts) > 1

    def _name(self, host: _Host, vm: str) -> str:
        return f"{host.label}{SEP}{vm}" if self._prefix else vm

    @property
    def names(self) -> Sequence[str]:
        return [self._name(h, s.name) for h in self._hosts for s in h.last]

    def _route(self, name: str) -> tuple[_Host, str]:
        if not self._prefix:
            return self._hosts[0], name
        label, sep, vm = name.partition(SEP)
        for host in self._hosts:
            if sep and host.label == label:
                return host, vm
        raise UnknownVM(f"no VM named {name!r} (expected HOST/VM)")

    async def _read(self, host: _Host) -> list[BalloonState]:
        try:
            states = await host.source.snapshot()
        except BalloonError as exc:
            host.error = exc.message
            now = time.time()
            return [s.with_changes(reachable=False, error=f"balloonctl serve unreachable: "
                                   f"{exc.message}", error_kind="ConnectFailed", taken_at=now)
                    for s in host.last]
        host.error = None
        host.last = states
        try:
            host.memory = await host.source.get("/host")
        except BalloonError:
            host.memory = None
        return states

    async def snapshot(self) -> list[BalloonState]:
        """Every host's VMs, host by host. Never raises ``BalloonError``."""
        per_host = await asyncio.gather(*(self._read(h) for h in self._hosts))
        return [s.with_changes(name=self._name(h, s.name))
                for h, states in zip(self._hosts, per_host, strict=True) for s in states]

    def totals(self, states: Sequence[BalloonState]) -> list[HostTotals]:
        """Per-host totals of a snapshot (by the ``HOST/`` prefix)."""
        out = []
        for host in self._hosts:
            mine = [s for s in states if not self._prefix or
                    s.name.startswith(host.label + SEP)]
            out.append(HostTotals(host.label, len(mine), sum(s.reachable for s in mine),
                                  sum(s.guest_ram or 0 for s in mine),
                                  sum(s.actual or 0 for s in mine), host.error))
        return out

    def host_lines(self) -> list[str]:
        """One line per host for the dashboard's header: totals, host memory, or why the
        host is unreachable."""
        size = format_size
        lines = []
        for t, host in zip(self.totals([self._renamed(h, s) for h in self._hosts
                                         for s in h.last]), self._hosts, strict=True):
            line = (f"{t.label}: VMs {t.reachable}/{t.vms}  guest RAM {size(t.guest_ram)}"
                    f"  ballooned {size(max(0, t.guest_ram - t.actual))}")
            memory = host.memory
            if t.error is not None:
                line += f"  unreachable: {escape_text(t.error)}"
            elif memory is not None:
                line += (f"  │  host {size(int(memory['total']))} avail "
                         f"{size(int(memory['available']))}")
            lines.append(line)
        return lines

    def _renamed(self, host: _Host, state: BalloonState) -> BalloonState:
        return state.with_changes(name=self._name(host, state.name))

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
