"""The OpenAPI 3.1 document of the API (``GET /v1/openapi.json``), written by hand and kept in
step with ``serve.api`` by a test that compares every route with ``PATHS``."""

from __future__ import annotations

from typing import Any

from balloonctl import __version__
from balloonctl.http.wire import CODE_STATUS
from balloonctl.model import JSON_KEYS

__all__ = ["PATHS", "document"]

_ERROR = {"$ref": "#/components/schemas/Error"}
_NAME = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
          "description": "The VM's name in the service's inventory"}]
_STATUS_TEXT = {400: "Bad input (a malformed body, a size that does not parse)",
                401: "Missing or wrong bearer token (TCP listeners)",
                404: "No VM of that name", 409: "Unsafe target, or a conflict with the VM's state",
                413: "Request body too large",
                502: "QEMU or qga refused the command",
                503: "The VM (or the host's memory, or auto) is unreachable or busy",
                504: "The VM did not answer in time"}


def _obj(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "additionalProperties": False,
            "properties": props}


def _op(summary: str, ok: dict[str, Any] | None = None, *, errors: tuple[int, ...] = (),
        body: dict[str, Any] | None = None, params: list[dict[str, Any]] | None = None,
        media: str = "application/json") -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": "OK", "content": {
        media: {"schema": ok or {"type": "object"}}}}}
    for status in sorted({400, 401, 413, *errors}):
        responses[str(status)] = {"description": _STATUS_TEXT[status],
                                  "content": {"application/json": {"schema": _ERROR}}}
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


_STATE = {"$ref": "#/components/schemas/BalloonState"}
_VM_ERRORS = (404, 409, 502, 503, 504)

PATHS: dict[str, dict[str, dict[str, Any]]] = {
    "/v1/names": {"get": _op("The VMs' names", _obj(["names"], names={
        "type": "array", "items": {"type": "string"}}))},
    "/v1/vms": {"get": _op("Every VM's latest snapshot (the JSON of `status --json`)",
                           {"type": "array", "items": _STATE})},
    "/v1/vms/{name}": {"get": _op("One VM's latest snapshot", _STATE, errors=(404,),
                                  params=_NAME)},
    "/v1/vms/{name}/target": {"post": _op(
        "Set the balloon target (journaled)", _obj(["name", "target"], name={"type": "string"},
                                                    target={"type": "integer"}),
        errors=_VM_ERRORS, params=_NAME, body=_obj(
            ["size"], size={"type": "string", "description": "1.5G, 75%, +256M, bytes..."},
            force={"type": "boolean", "default": False},
            reason={"type": "string", "maxLength": 200},
            origin={"type": "string", "enum": ["set", "dashboard"]}))},
    "/v1/vms/{name}/hint": {"post": _op(
        "Turn the cache-first hint on or off", errors=_VM_ERRORS, params=_NAME,
        body=_obj(["on"], on={"type": "boolean"}))},
    "/v1/vms/{name}/stats": {"post": _op(
        "Set the guest stats polling interval (0: off)", errors=_VM_ERRORS, params=_NAME,
        body=_obj(["interval"], interval={"type": "integer", "minimum": 0}))},
    "/v1/vms/{name}/undo": {"post": _op(
        "Take back the last journaled changes (as `balloonctl undo`)", errors=_VM_ERRORS,
        params=_NAME, body=_obj([], steps={"type": "integer", "minimum": 1, "default": 1},
                                dry_run={"type": "boolean", "default": False},
                                force={"type": "boolean", "default": False}))},
    "/v1/vms/{name}/reclaim": {"post": _op(
        "Take the VM back from another writer: auto manages it again from its next cycle "
        "(as `auto --reclaim`; nothing is sent or journaled). `reclaimed`: whether it was "
        "marked as moved by another writer", _obj(["name", "reclaimed"],
                                                  name={"type": "string"},
                                                  reclaimed={"type": "boolean"}),
        errors=_VM_ERRORS, params=_NAME, body=_obj([]))},
    "/v1/host": {"get": _op("The host's memory, PSI and KSM", errors=(503,))},
    "/v1/plan": {"get": _op("What the policy would do now (nothing is sent)", errors=(503,))},
    "/v1/auto": {
        "get": _op("Whether auto runs, and its last decisions", errors=(503,)),
        "post": _op("Turn auto on or off", errors=(503,),
                    body=_obj(["enabled"], enabled={"type": "boolean"}))},
    "/v1/history": {"get": _op("Journal entries, oldest first", errors=(404, 503), params=[
        {"name": "vm", "in": "query", "schema": {"type": "string"}},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 0}}])},
    "/v1/stream": {"get": _op(
        "Snapshots after every poll, events (auto's changes among them) and auto's plan "
        "after every cycle, as they happen", media="application/x-ndjson", errors=(400,),
        params=[{"name": "snapshots", "in": "query",
                 "schema": {"type": "string", "enum": ["true", "false"]}}])},
    "/v1/events": {"get": _op("QMP events, connection changes and auto's changes, as they "
                              "happen",
                              media="application/x-ndjson")},
    "/v1/health": {"get": _op("The service is up")},
    "/v1/openapi.json": {"get": _op("This document")},
    "/metrics": {"get": _op("Prometheus metrics (docs/serve.md lists them)",
                            {"type": "string"}, media="text/plain")},
}


def document() -> dict[str, Any]:
    """The OpenAPI document."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "balloonctl serve", "version": __version__,
                 "description": "One service per host: the VMs' balloons, the host's memory, "
                                "the journal and auto. Over TCP every request needs "
                                "`Authorization: Bearer TOKEN`."},
        "paths": PATHS,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": _obj(["error", "code", "kind", "vm"],
                              error={"type": "string"},
                              code={"type": "string", "enum": sorted(CODE_STATUS)},
                              kind={"type": ["string", "null"]},
                              vm={"type": ["string", "null"]}),
                "BalloonState": {"type": "object", "required": list(JSON_KEYS),
                                 "properties": {key: {} for key in JSON_KEYS}},
            },
        },
        "security": [{"bearer": []}],
    }
