"""The HTTP API of ``balloonctl serve`` (Starlette). ``serve.openapi`` documents every route;
docs/serve.md has the table. Request bodies are parsed here, in one place, with the CLI's
parsers and error texts; errors are ``{"error", "code", "kind", "vm"}`` with the status
of ``http.wire.status_for``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from balloonctl.errors import BalloonError, UsageError
from balloonctl.fleet import DataSource
from balloonctl.host import HostMemory, describe_host
from balloonctl.http.wire import (
    API_PREFIX,
    error_body,
    event_to_json,
    plain_error,
    status_for,
)
from balloonctl.journal import Origin
from balloonctl.model import BalloonState
from balloonctl.serve.service import HostService
from balloonctl.units import parse_target

__all__ = ["create_app", "host_json"]

Handler = Callable[[Request], Awaitable[Response]]
_MISSING = object()
_ORIGINS = {Origin.SET.value: Origin.SET, Origin.DASHBOARD.value: Origin.DASHBOARD}
_MAX_REASON = 200


async def _body(request: Request, allowed: set[str]) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw) if raw.strip() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UsageError("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise UsageError("the request body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        expected = ", ".join(sorted(allowed)) or "no fields"
        raise UsageError(f"unknown field {unknown[0]!r} (expected: {expected})")
    return body


def _field(body: Mapping[str, Any], key: str, kind: type, *, default: Any = _MISSING) -> Any:
    value = body.get(key, default)
    if value is _MISSING:
        raise UsageError(f"{key!r} is required")
    # bool is an int in Python; an interval of `true` is still malformed.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UsageError(f"{key!r} must be a {'boolean' if kind is bool else kind.__name__}")
    return value


def _query_int(request: Request, key: str, *, low: int) -> int | None:
    text = request.query_params.get(key)
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()) or int(text) < low:
        raise UsageError(f"{key!r} must be a whole number of at least {low}, not {text!r}")
    return int(text)


def host_json(host: HostMemory, guest_ram_total: int) -> dict[str, Any]:
    """The host's memory as the API shows it (bytes as ints, PSI as percentages)."""
    psi = host.psi
    ksm = host.ksm
    return {
        "source": host.source, "total": host.total, "available": host.available,
        "free": host.free, "cached": host.cached, "anon": host.anon,
        "swap_total": host.swap_total, "swap_free": host.swap_free,
        "psi": None if psi is None else {
            "some_avg10": psi.some_avg10, "some_avg60": psi.some_avg60,
            "some_avg300": psi.some_avg300, "full_avg10": psi.full_avg10,
            "full_avg60": psi.full_avg60, "full_avg300": psi.full_avg300,
            "some_total": psi.some_total, "full_total": psi.full_total},
        "ksm": None if ksm is None else {
            "run": ksm.run, "pages_shared": ksm.pages_shared,
            "pages_sharing": ksm.pages_sharing, "saved": ksm.saved},
        "guest_ram": guest_ram_total,
        "summary": describe_host(host, guest_ram_total),
    }


T = TypeVar("T")


async def _on_service(service: HostService, work: Coroutine[Any, Any, T]) -> T:
    """Await ``work`` on the service's loop (which may be another thread's)."""
    loop = service.loop
    if loop is None or loop is asyncio.get_running_loop():
        return await work
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, loop))


async def _call(fn: Callable[..., T], *args: Any) -> T:
    return fn(*args)


async def _bridged(service: HostService,
                   make: Callable[[], AsyncIterator[T]]) -> AsyncIterator[T]:
    """The items of ``make()``, an async generator run on the service's loop."""
    items = make()

    async def step() -> tuple[bool, T | None]:
        try:
            return True, await anext(items)
        except StopAsyncIteration:
            return False, None

    try:
        while True:
            more, item = await _on_service(service, step())
            if not more:
                return
            yield item  # type: ignore[misc]
    finally:
        loop = service.loop
        if loop is not None and loop is not asyncio.get_running_loop():
            asyncio.run_coroutine_threadsafe(_close(items), loop)
        else:
            await _close(items)


async def _close(items: AsyncIterator[Any]) -> None:
    aclose = getattr(items, "aclose", None)
    if aclose is not None:
        await aclose()


def _ndjson(items: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    async def lines() -> AsyncIterator[bytes]:
        async for item in items:
            yield (json.dumps(item, default=str) + "\n").encode()

    return StreamingResponse(lines(), media_type="application/x-ndjson")


def create_app(source: HostService | DataSource, *, metrics: bool = True,
               lifespan: bool = True, manage: bool = True,
               on_start: Callable[[], None] | None = None) -> Starlette:
    """The API over ``source`` (a ``DataSource`` is wrapped in a ``HostService`` without a
    journal, host or auto). With ``lifespan`` the app's lifespan calls ``on_start``, and
    with ``manage`` it also starts the service first and stops it at the end. When the
    service runs on another thread's loop (``runner``), handlers run its calls there."""
    service = source if isinstance(source, HostService) else HostService(source)

    async def on(work: Coroutine[Any, Any, T]) -> T:
        return await _on_service(service, work)

    async def names(request: Request) -> Response:
        return JSONResponse({"names": list(service.names)})

    async def vms(request: Request) -> Response:
        # the cached bytes need nothing from the service's loop (one attribute read)
        body = service.cached_listing or await on(service.listing())
        return Response(body, media_type="application/json")

    async def vm(request: Request) -> Response:
        return JSONResponse((await on(service.state(request.path_params["name"]))).to_json())

    async def target(request: Request) -> Response:
        name = request.path_params["name"]
        service._known(name)
        body = await _body(request, {"size", "force", "reason", "origin"})
        spec = parse_target(_field(body, "size", str))
        force = _field(body, "force", bool, default=False)
        reason = _field(body, "reason", str, default="set through balloonctl serve")
        if not reason.strip() or len(reason) > _MAX_REASON:
            raise UsageError(f"'reason' must be 1 to {_MAX_REASON} characters")
        origin = _ORIGINS.get(_field(body, "origin", str, default="set"))
        if origin is None:
            raise UsageError(f"'origin' must be one of {', '.join(_ORIGINS)}")
        value = await on(service.set_target(name, spec, force=force, reason=reason,
                                            origin=origin))
        return JSONResponse({"name": name, "target": value})

    async def hint(request: Request) -> Response:
        name = request.path_params["name"]
        service._known(name)
        enabled = _field(await _body(request, {"on"}), "on", bool)
        state = await on(service.set_hint(name, enabled))
        return JSONResponse({"name": name, "hint": {
            "mode": state.mode.value, "enabled": state.enabled, "detail": state.detail,
            "released": state.released}})

    async def stats(request: Request) -> Response:
        name = request.path_params["name"]
        service._known(name)
        interval = _field(await _body(request, {"interval"}), "interval", int)
        await on(service.enable_stats(name, interval))
        return JSONResponse({"name": name, "interval": interval})

    async def undo(request: Request) -> Response:
        name = request.path_params["name"]
        service._known(name)
        body = await _body(request, {"steps", "dry_run", "force"})
        steps = _field(body, "steps", int, default=1)
        if steps < 1:
            raise UsageError(f"steps must be at least 1, not {steps}")
        return JSONResponse(await on(service.undo(
            name, steps, dry_run=_field(body, "dry_run", bool, default=False),
            force=_field(body, "force", bool, default=False))))

    async def reclaim(request: Request) -> Response:
        name = request.path_params["name"]
        service._known(name)
        await _body(request, set())  # {} or nothing
        return JSONResponse({"name": name, "reclaimed": await on(service.reclaim(name))})

    async def host(request: Request) -> Response:
        async def read() -> tuple[HostMemory, list[BalloonState]]:
            return service.read_host_now(), await service.snapshot()

        memory, states = await on(read())
        return JSONResponse(host_json(memory, sum(s.guest_ram or 0 for s in states)))

    async def plan(request: Request) -> Response:
        return JSONResponse({"decisions": [d.to_json() for d in await on(service.plan())]})

    async def auto_get(request: Request) -> Response:
        return JSONResponse(await on(_call(service.auto_status)))

    async def auto_set(request: Request) -> Response:
        enabled = _field(await _body(request, {"enabled"}), "enabled", bool)
        return JSONResponse(await on(_call(service.set_auto, enabled)))

    async def history(request: Request) -> Response:
        vm_name = request.query_params.get("vm")
        if vm_name is not None:
            service._known(vm_name)
        limit = _query_int(request, "limit", low=0)
        entries = await on(service.history(vm_name, limit))
        return JSONResponse({"entries": [e.to_json() for e in entries]})

    async def stream(request: Request) -> Response:
        text = request.query_params.get("snapshots", "true")
        if text not in ("true", "false"):
            raise UsageError(f"'snapshots' must be true or false, not {text!r}")
        snapshots = text == "true"
        return _ndjson(_bridged(service, lambda: service.stream(snapshots=snapshots)))

    async def events(request: Request) -> Response:
        async def items() -> AsyncIterator[dict[str, Any]]:
            async for name, event in _bridged(service, service.events):
                yield event_to_json(name, event)

        return _ndjson(items())

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True, "host": service.label, "vms": len(service.names),
                             "polls": service.health.polls,
                             "auto": service.auto is not None})

    async def openapi(request: Request) -> Response:
        from balloonctl.serve.openapi import document

        return JSONResponse(document())

    async def metrics_text(request: Request) -> Response:
        body, content_type = await on(_call(exporter.render))
        return Response(body, media_type=content_type)

    async def balloon_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BalloonError)
        status = status_for(exc)
        if status >= 500:
            service.health.error("api", type(exc).__name__)
        return JSONResponse(error_body(exc), status_code=status)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        return JSONResponse(plain_error(code, str(exc.detail)), status_code=exc.status_code,
                            headers=exc.headers)

    async def internal_error(request: Request, exc: Exception) -> Response:
        # A bug: still the documented error body (docs/serve.md, code `internal`); the
        # traceback goes to the server's log (Starlette re-raises it after this answer).
        service.health.error("api", type(exc).__name__)
        return JSONResponse(plain_error("internal", f"internal error ({type(exc).__name__}); "
                                                    "see the service's log"), status_code=500)

    @contextlib.asynccontextmanager
    async def life(app: Starlette) -> AsyncIterator[None]:
        if manage:
            await service.start()
        if on_start is not None:
            on_start()
        try:
            yield
        finally:
            if manage:
                await service.stop()

    if metrics:
        from balloonctl.serve.metrics import Exporter

        exporter = Exporter(service)
    p = API_PREFIX
    routes = [
        Route(f"{p}/names", names, methods=["GET"]),
        Route(f"{p}/vms", vms, methods=["GET"]),
        Route(f"{p}/vms/{{name}}", vm, methods=["GET"]),
        Route(f"{p}/vms/{{name}}/target", target, methods=["POST"]),
        Route(f"{p}/vms/{{name}}/hint", hint, methods=["POST"]),
        Route(f"{p}/vms/{{name}}/stats", stats, methods=["POST"]),
        Route(f"{p}/vms/{{name}}/undo", undo, methods=["POST"]),
        Route(f"{p}/vms/{{name}}/reclaim", reclaim, methods=["POST"]),
        Route(f"{p}/host", host, methods=["GET"]),
        Route(f"{p}/plan", plan, methods=["GET"]),
        Route(f"{p}/auto", auto_get, methods=["GET"]),
        Route(f"{p}/auto", auto_set, methods=["POST"]),
        Route(f"{p}/history", history, methods=["GET"]),
        Route(f"{p}/stream", stream, methods=["GET"]),
        Route(f"{p}/events", events, methods=["GET"]),
        Route(f"{p}/health", health, methods=["GET"]),
        Route(f"{p}/openapi.json", openapi, methods=["GET"]),
    ]
    if metrics:
        routes.append(Route("/metrics", metrics_text, methods=["GET"]))
    app = Starlette(routes=routes, lifespan=life if lifespan else None,
                    exception_handlers={BalloonError: balloon_error,
                                        HTTPException: http_error,
                                        Exception: internal_error})
    app.state.service = service
    return app
