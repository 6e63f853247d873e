"""One client interface for every way balloonctl reaches a VM, and the factory that picks one.

``VmClient`` is what the fleet, the CLI and the dashboard call; ``BalloonClient`` (QMP) and
``LibvirtClient`` (libvirt, optional extra) both provide it with the same ``BalloonState``.
``client_for(ref)`` picks by ``VmRef.backend``; the libvirt module is imported only for a
libvirt VM.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from balloonctl.config import LIBVIRT_DEFAULT_URI, is_libvirt_socket, libvirt_domain_of
from balloonctl.errors import ManagedByLibvirt
from balloonctl.model import BalloonState, DeviceFeatures, GuestStats, HintState, VmRef
from balloonctl.qga import QgaClient
from balloonctl.qmp import BalloonClient, BalloonEvent
from balloonctl.targets import RememberedTargets
from balloonctl.units import TargetSpec

__all__ = ["VmClient", "client_for"]


class VmClient(Protocol):
    """One VM's balloon, whatever reaches it. See ``BalloonClient`` for each method."""

    @property
    def name(self) -> str: ...

    @property
    def address(self) -> str: ...

    @property
    def qga(self) -> str | None: ...

    @property
    def command_timeout(self) -> float: ...

    def qga_client(self, *, timeout: float) -> QgaClient: ...

    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    def run_facts(self) -> Any: ...

    @property
    def targets(self) -> RememberedTargets: ...

    async def snapshot(self, previous: BalloonState | None = None) -> BalloonState: ...

    async def query_actual(self) -> int: ...

    async def guest_ram(self) -> int: ...

    async def stats(self) -> GuestStats: ...

    async def features(self) -> DeviceFeatures: ...

    async def polling_interval(self) -> int: ...

    async def enable_stats(self, interval: int) -> None: ...

    def last_target(self) -> int | None: ...

    async def current_target(self, *, actual: int | None = None,
                             guest_ram: int | None = None) -> int | None: ...

    async def resolve_target(self, spec: TargetSpec | int, *, force: bool = False) -> int: ...

    async def set_target(self, spec: TargetSpec | int, *, force: bool = False,
                         dry_run: bool = False, record: bool = True) -> int: ...

    async def wait_for_target(self, target: int, *,
                              timeout: float = 60.0,  # noqa: ASYNC109
                              stall_timeout: float = 5.0,
                              progress: Callable[[int, int], None] | None = None) -> int: ...

    async def hint_status(self) -> HintState: ...

    async def set_hint(self, on: bool) -> HintState: ...

    def events(self) -> AsyncIterator[BalloonEvent]: ...


def client_for(ref: VmRef, **kw: Any) -> VmClient:
    """A new (unconnected) client for ``ref``: ``LibvirtClient`` for a libvirt VM, else
    ``BalloonClient``. ``kw`` are ``BalloonClient``'s options (store, timeouts, trace,
    facts); the libvirt client ignores the QMP-only ones.

    Raises:
        ManagedByLibvirt: the QMP socket is one libvirt holds (the message names the
            domain and ``--libvirt``); nothing is connected.
        BackendMissing: a libvirt VM and no libvirt-python.
    """
    if ref.backend == "libvirt":
        from balloonctl.libvirt.client import LibvirtClient

        return LibvirtClient.from_ref(ref, **kw)
    if is_libvirt_socket(ref.qmp):
        domain = libvirt_domain_of(ref.qmp)
        which = f"domain {domain!r}" if domain else "one of its domains"
        raise ManagedByLibvirt(
            f"{ref.qmp} is libvirt's monitor socket for {which}, held while it runs: reach "
            f"libvirt's VMs through it with `balloonctl --libvirt {LIBVIRT_DEFAULT_URI} ...`",
            vm=ref.name)
    return BalloonClient.from_ref(ref, **kw)
