"""balloonctl over HTTP: ``create_app(source)`` serves a ``DataSource`` (Starlette), and
``HttpSource`` is a ``DataSource`` that talks to such a server (httpx).

The server needs the ``http`` extra (starlette, uvicorn); names are imported lazily so the
client works without it, and a missing extra fails with a message saying what to install.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from balloonctl.http.client import HttpSource
    from balloonctl.http.server import create_app, serve

__all__ = ["HttpSource", "create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name == "HttpSource":
        from balloonctl.http.client import HttpSource

        return HttpSource
    if name in ("create_app", "serve"):
        try:
            from balloonctl.http import server
        except ModuleNotFoundError as exc:
            raise ImportError(
                f"balloonctl's HTTP server needs {exc.name}: pip install 'balloonctl[http]'"
            ) from exc
        return getattr(server, name)
    raise AttributeError(f"module 'balloonctl.http' has no attribute {name!r}")
