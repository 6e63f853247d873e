"""The httpx client side of ``balloonctl serve``: ``HttpSource`` is a ``DataSource`` over one
service (a unix socket or a URL). ``wire`` holds what both sides agree on and imports no
framework, so the server side (``balloonctl.serve``) can use it without httpx.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from balloonctl.http.client import HttpSource

__all__ = ["HttpSource"]


def __getattr__(name: str) -> Any:
    if name == "HttpSource":
        from balloonctl.http.client import HttpSource

        return HttpSource
    raise AttributeError(f"module 'balloonctl.http' has no attribute {name!r}")
