"""What server and client agree on: error kinds and status codes, and event encoding.

No third-party imports here, so both sides (and tests) share it cheaply.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from balloonctl import errors
from balloonctl.errors import BalloonError
from balloonctl.model import BalloonState
from balloonctl.qmp import BalloonEvent
from balloonctl.units import SizeKind, TargetSpec

__all__ = [
    "API_PREFIX",
    "error_body",
    "error_from_body",
    "event_from_json",
    "event_to_json",
    "spec_text",
    "status_for",
]

API_PREFIX = "/v1"

# Most specific first: the first class the error is an instance of decides the status.
_STATUS: tuple[tuple[type[BalloonError], int], ...] = (
    (errors.UnknownVM, 404),
    # the service's installation lacks an optional backend (libvirt-python): not the request
    (errors.BackendMissing, 503),
    (errors.UsageError, 400),
    (errors.UnsafeTarget, 422),
    (errors.HintUnsupported, 422),
    (errors.NoBalloonDevice, 409),
    (errors.DriverNotReady, 409),
    (errors.SocketBusy, 503),
    (errors.ManagedByLibvirt, 503),  # held by libvirt, as a busy socket by another client
    (errors.ConnectFailed, 502),
    (errors.Disconnected, 502),
    (errors.QMPTimeout, 504),
    (errors.WaitTimeout, 504),
    (errors.QMPCommandError, 502),
    (errors.BadReply, 502),  # QEMU answered nonsense: a bad gateway, like a refusal
    (errors.AgentError, 502),
    # the service's own files (host figures, journal, state): it cannot serve the request now
    (errors.HostReadError, 503),
    (errors.JournalError, 503),
    (errors.StateFileError, 503),
)


def status_for(exc: BalloonError) -> int:
    """The HTTP status a balloonctl error is answered with."""
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_body(exc: BalloonError) -> dict[str, Any]:
    return {"error": exc.message, "kind": type(exc).__name__, "vm": exc.vm}


def error_from_body(body: Mapping[str, Any], status: int) -> BalloonError:
    """Rebuild the error the server raised, as the same ``balloonctl.errors`` class."""
    kind = body.get("kind")
    cls = getattr(errors, kind, None) if isinstance(kind, str) else None
    if not (isinstance(cls, type) and issubclass(cls, BalloonError)):
        cls = BalloonError
    message = body.get("error")
    if not isinstance(message, str):
        message = f"HTTP {status} without an error message"
    vm = body.get("vm")
    vm = vm if isinstance(vm, str) else None
    try:
        return cls(message, vm=vm)
    except TypeError:  # a class whose constructor wants more (a path): keep class and text
        exc = cls.__new__(cls)
        BalloonError.__init__(exc, message, vm=vm)
        return exc


def spec_text(spec: TargetSpec) -> str:
    """The spec as text that parses back to exactly the same target (no rounding)."""
    if spec.kind is SizeKind.ABSOLUTE:
        return str(int(spec.value))
    if spec.kind is SizeKind.RELATIVE:
        value = int(spec.value)
        return f"{'+' if value >= 0 else '-'}{abs(value)}"
    return spec.text


def event_to_json(name: str, event: BalloonEvent) -> dict[str, Any]:
    data = {
        key: value.to_json() if isinstance(value, BalloonState) else value
        for key, value in event.data.items()
    }
    return {"vm": name, "event": event.name, "data": data, "timestamp": event.timestamp}


def event_from_json(body: Mapping[str, Any]) -> tuple[str, BalloonEvent]:
    data = dict(body.get("data") or {})
    state = data.get("state")
    if isinstance(state, dict):
        data["state"] = BalloonState.from_json(state)
    return str(body["vm"]), BalloonEvent(
        str(body["event"]), data, float(body.get("timestamp") or 0.0)
    )
