"""``balloonctl serve``: one service per host that owns the VMs' QMP sockets and serves an
HTTP API, Prometheus metrics and a live stream (docs/serve.md).

    HostService   the VMs of one host, polled; journal, plan, undo, auto (``service``)
    create_app    the Starlette app over a HostService or any DataSource (``api``)
    serve         uvicorn on a private unix socket or a token-guarded TCP port (``runner``)
    AutoControl   what the service needs from the auto controller (``auto.AutoController``)
    SERVE_REASON  the journal's reason for a target an HTTP client set

Needs the ``serve`` extra (starlette, uvicorn, prometheus_client); the names are imported
lazily so that a missing extra fails with a message saying what to install.
``balloonctl.serve.paths`` (socket and token locations) needs nothing extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from balloonctl.serve.api import create_app
    from balloonctl.serve.runner import serve
    from balloonctl.serve.service import SERVE_REASON, AutoControl, HostService

__all__ = ["SERVE_REASON", "AutoControl", "HostService", "create_app", "serve"]

_WHERE = {"create_app": "api", "serve": "runner", "HostService": "service",
          "AutoControl": "parts", "SERVE_REASON": "service"}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'balloonctl.serve' has no attribute {name!r}")
    import importlib

    try:
        loaded = importlib.import_module(f"balloonctl.serve.{module}")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "balloonctl":
            raise
        raise ImportError(f"balloonctl serve needs {exc.name}: "
                          "pip install 'balloonctl[serve]'") from exc
    return getattr(loaded, name)
