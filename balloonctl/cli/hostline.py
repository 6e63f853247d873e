"""The host's memory beside ``status``: a first line of the table (``describe_host``), or,
with ``--host-memory --json``, an object ``{"host": {...}, "vms": [...]}`` (``host_record``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from balloonctl.cli.output import Format, error
from balloonctl.errors import HostReadError, UsageError
from balloonctl.host import HostMemory, describe_host, read_host
from balloonctl.model import BalloonState

__all__ = ["guest_ram_total", "host_record", "read_inventory_host", "with_host"]


def guest_ram_total(states: Sequence[BalloonState]) -> int:
    return sum(s.guest_ram for s in states if s.guest_ram is not None)


def host_record(host: HostMemory, guest_ram: int) -> dict[str, Any]:
    """The host as JSON: sizes in bytes, PSI in percent (``avg10``), KSM saved in bytes."""
    psi, ksm = host.psi, host.ksm
    return {
        "source": host.source, "total": host.total, "available": host.available,
        "free": host.free, "cached": host.cached, "anon": host.anon,
        "swap_total": host.swap_total, "swap_free": host.swap_free,
        "guest_ram": guest_ram,
        "overcommit": round(guest_ram / host.total, 3) if host.total else None,
        "ksm_saved": None if ksm is None else ksm.saved,
        "ksm_run": None if ksm is None else ksm.run,
        "psi_some_avg10": None if psi is None else psi.some_avg10,
        "psi_full_avg10": None if psi is None else psi.full_avg10,
    }


def read_inventory_host() -> HostMemory:
    """The host of the inventory's VMs (a fake fleet's simulated host, or this machine).

    Raises:
        HostReadError: its files cannot be read.
    """
    from balloonctl.cli.common import settings

    return read_host(settings().inventory().host_root)


def with_host(text: str, states: Sequence[BalloonState], fmt: Format, show: bool) -> str:
    """``text`` (the rendered states) with the host: a first line for a table, a
    ``{"host", "vms"}`` object for JSON. A host that cannot be read is one error line on
    stderr, and the states alone.

    Raises:
        UsageError: ``show`` with NDJSON or CSV (rows of one shape only).
    """
    if not show:
        return text
    if fmt in (Format.NDJSON, Format.CSV):
        raise UsageError(f"--host-memory works with table and json output, not {fmt.value}")
    try:
        host = read_inventory_host()
    except HostReadError as exc:
        error(f"host: {exc}")
        return text
    total = guest_ram_total(states)
    if fmt is Format.JSON:
        return json.dumps({"host": host_record(host, total),
                           "vms": [s.to_json() for s in states]}, indent=2)
    return f"{describe_host(host, total)}\n{text}"
