"""libvirt-managed VMs behind the same client interface as QMP ones (``balloonctl[libvirt]``).

- ``LibvirtClient``: one domain's balloon, with ``BalloonClient``'s public methods and the
  same ``BalloonState`` (``client.py``);
- ``list_domains(uri)``: the running domains of a libvirt URI, for the inventory;
- ``parse``: every reply from libvirt (domain XML, memory stats, errors) parsed in one place.

Importing this package does not import libvirt-python: the binding is loaded on first use,
and a missing one is ``BackendMissing`` ("pip install 'balloonctl[libvirt]'").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from balloonctl.libvirt.binding import DEFAULT_URI, list_domains

if TYPE_CHECKING:
    from balloonctl.libvirt.client import LibvirtClient, address_of

__all__ = ["DEFAULT_URI", "LibvirtClient", "address_of", "list_domains"]


def __getattr__(name: str) -> Any:
    # The client (and with it qemu.qmp) only when asked for: listing domains for shell
    # completion stays light.
    if name in ("LibvirtClient", "address_of"):
        from balloonctl.libvirt import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
