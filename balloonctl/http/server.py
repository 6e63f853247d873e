"""The HTTP face of a ``DataSource``: a Starlette app that a per-host agent serves.

    GET  /v1/names                 {"names": [...]}
    GET  /v1/vms                   [BalloonState.to_json(), ...]
    POST /v1/vms/{name}/target     {"size": "1G", "force": false} -> {"name", "target"}
    POST /v1/vms/{name}/hint       {"on": true}                   -> {"name", "hint": {...}}
    POST /v1/vms/{name}/stats      {"interval": 2}                -> {"name", "interval"}
    GET  /v1/events                newline-delimited JSON events (hold-mode sources)

Errors are ``{"error", "kind", "vm"}`` with a status from ``wire.status_for``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from balloonctl.errors import BalloonError, UnknownVM, UsageError
from balloonctl.http.wire import API_PREFIX, error_body, event_to_json, status_for
from balloonctl.units import parse_target

if TYPE_CHECKING:
    from balloonctl.fleet import DataSource

__all__ = ["create_app", "serve"]


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UsageError("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise UsageError("the request body must be a JSON object")
    return body


def _field(body: dict[str, Any], key: str, kind: type, *, default: Any = None) -> Any:
    value = body.get(key, default)
    # bool is an int in Python; an interval of `true` is still malformed.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UsageError(f"{key!r} must be a {kind.__name__}")
    return value


def _known(source: DataSource, name: str) -> str:
    if name not in source.names:
        raise UnknownVM(f"no VM named {name!r}")
    return name


def create_app(source: DataSource) -> Starlette:
    """A Starlette app serving ``source``. The caller owns the source (and closes it)."""

    async def names(request: Request) -> Response:
        return JSONResponse({"names": list(source.names)})

    async def vms(request: Request) -> Response:
        return JSONResponse([state.to_json() for state in await source.snapshot()])

    async def target(request: Request) -> Response:
        name = _known(source, request.path_params["name"])
        body = await _body(request)
        spec = parse_target(_field(body, "size", str))
        force = _field(body, "force", bool, default=False)
        return JSONResponse({"name": name, "target": await source.set_target(name, spec,
                                                                             force=force)})

    async def hint(request: Request) -> Response:
        name = _known(source, request.path_params["name"])
        on = _field(await _body(request), "on", bool)
        state = await source.set_hint(name, on)
        return JSONResponse({"name": name, "hint": {
            "mode": state.mode.value, "enabled": state.enabled, "detail": state.detail,
            "released": state.released,
        }})

    async def stats(request: Request) -> Response:
        name = _known(source, request.path_params["name"])
        interval = _field(await _body(request), "interval", int)
        if interval < 0:
            raise UsageError("'interval' must be 0 (off) or more seconds")
        await source.enable_stats(name, interval)
        return JSONResponse({"name": name, "interval": interval})

    async def events(request: Request) -> Response:
        async def lines() -> AsyncIterator[bytes]:
            async for name, event in source.events():
                yield (json.dumps(event_to_json(name, event), default=str) + "\n").encode()

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def balloon_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BalloonError)
        return JSONResponse(error_body(exc), status_code=status_for(exc))

    p = API_PREFIX
    return Starlette(
        routes=[
            Route(f"{p}/names", names),
            Route(f"{p}/vms", vms),
            Route(f"{p}/vms/{{name}}/target", target, methods=["POST"]),
            Route(f"{p}/vms/{{name}}/hint", hint, methods=["POST"]),
            Route(f"{p}/vms/{{name}}/stats", stats, methods=["POST"]),
            Route(f"{p}/events", events),
        ],
        exception_handlers={BalloonError: balloon_error},
    )


async def serve(
    source: DataSource, *, uds: str | None = None, host: str = "127.0.0.1", port: int = 8765
) -> None:
    """Serve ``source`` with uvicorn on a unix socket (``uds``) or ``host:port`` until
    cancelled."""
    import uvicorn

    config = uvicorn.Config(
        create_app(source), uds=uds, host=host, port=port, log_level="warning",
        lifespan="off",
    )
    await uvicorn.Server(config).serve()
