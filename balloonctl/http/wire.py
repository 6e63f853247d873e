"""What server and client agree on: error kinds and status codes, and event encoding.

No third-party imports here, so both sides (and tests) share it cheaply.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from balloonctl import errors
from balloonctl.errors import BadReply, BalloonError
from balloonctl.host import HostMemory, Ksm, Psi
from balloonctl.model import BalloonState
from balloonctl.qmp import BalloonEvent
from balloonctl.units import SizeKind, TargetSpec

__all__ = [
    "API_PREFIX",
    "CODE_STATUS",
    "code_for",
    "error_body",
    "error_from_body",
    "event_from_json",
    "event_to_json",
    "host_from_json",
    "plain_error",
    "spec_text",
    "status_for",
]

API_PREFIX = "/v1"

# Most specific first: the first class the error is an instance of decides the status and
# the stable ``code`` of the error body (docs/serve.md lists them).
_STATUS: tuple[tuple[type[BalloonError], int, str], ...] = (
    (errors.UnknownVM, 404, "unknown_vm"),
    (errors.SizeError, 400, "bad_size"),
    # the service's installation lacks an optional backend (libvirt-python): not the request
    (errors.BackendMissing, 503, "backend_missing"),
    (errors.UsageError, 400, "bad_request"),
    (errors.UnsafeTarget, 409, "unsafe_target"),
    (errors.HintUnsupported, 409, "hint_unsupported"),
    (errors.NoBalloonDevice, 409, "no_balloon_device"),
    (errors.DriverNotReady, 409, "driver_not_ready"),
    (errors.SocketBusy, 503, "vm_busy"),
    (errors.ManagedByLibvirt, 503, "vm_busy"),  # held by libvirt, as by another client
    (errors.ConnectFailed, 503, "vm_unreachable"),
    (errors.Disconnected, 503, "vm_unreachable"),
    (errors.QMPTimeout, 504, "vm_timeout"),
    (errors.WaitTimeout, 504, "wait_timeout"),
    (errors.QMPCommandError, 502, "qmp_error"),
    (errors.BadReply, 502, "bad_reply"),  # QEMU answered nonsense: a bad gateway
    (errors.AgentError, 502, "qga_error"),
    # the service's own files (host figures, journal, state): it cannot serve the request now
    (errors.HostReadError, 503, "host_unreadable"),
    (errors.JournalError, 503, "journal_error"),
    (errors.StateFileError, 503, "state_file_error"),
)
# Errors of the service itself, not of the tree (they are not BalloonErrors on the wire's
# client side: the client raises them as BalloonError with these codes).
CODE_STATUS: dict[str, int] = {
    **{code: status for _, status, code in _STATUS},
    "conflict": 409,
    "unavailable": 503,
    "unauthorized": 401,
    "not_found": 404,
    "method_not_allowed": 405,
    "body_too_large": 413,
    "internal": 500,
}


def status_for(exc: BalloonError) -> int:
    """The HTTP status a balloonctl error is answered with."""
    return CODE_STATUS[code_for(exc)]


def code_for(exc: BalloonError) -> str:
    """The stable ``code`` of a balloonctl error's body."""
    for cls, _, code in _STATUS:
        if isinstance(exc, cls):
            return code
    name = type(exc).__name__
    if name == "Conflict":
        return "conflict"
    if name == "Unavailable":
        return "unavailable"
    return "internal"


def error_body(exc: BalloonError) -> dict[str, Any]:
    return {"error": exc.message, "code": code_for(exc), "kind": type(exc).__name__,
            "vm": exc.vm}


def plain_error(code: str, message: str) -> dict[str, Any]:
    """An error body for a failure outside the error tree (auth, size, routing)."""
    return {"error": message, "code": code, "kind": None, "vm": None}


def error_from_body(body: Mapping[str, Any], status: int) -> BalloonError:
    """Rebuild the error the server raised, as the same ``balloonctl.errors`` class (a
    ``UsageError`` for 400/401/413 answers outside the tree, else ``BalloonError``)."""
    kind = body.get("kind")
    cls = getattr(errors, kind, None) if isinstance(kind, str) else None
    if not (isinstance(cls, type) and issubclass(cls, BalloonError)):
        cls = errors.UsageError if status in (400, 401, 404, 413) else BalloonError
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


def _count(body: Mapping[str, Any], key: str, where: str) -> int:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadReply(f"{where}: {key!r} is not a byte count: {value!r:.40}")
    return value


def _ratio(body: Mapping[str, Any], key: str, where: str) -> float:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise BadReply(f"{where}: {key!r} is not a percentage: {value!r:.40}")
    return float(value)


def host_from_json(body: Any, where: str = "GET /v1/host") -> HostMemory:
    """The service's ``GET /v1/host`` answer (``serve.api.host_json``) as a ``HostMemory``:
    RAM, available, free, cache, swap, PSI (percent) and KSM (``saved`` bytes kept).

    Raises:
        BadReply: not the shape the service sends (``where`` names the request).
    """
    if not isinstance(body, Mapping):
        raise BadReply(f"{where}: expected an object, got {type(body).__name__}")
    sizes = {k: _count(body, k, where) for k in ("total", "available", "free", "cached",
                                                  "anon", "swap_total", "swap_free")}
    psi = body.get("psi")
    ksm = body.get("ksm")
    if psi is not None and not isinstance(psi, Mapping):
        raise BadReply(f"{where}: 'psi' is not an object")
    if ksm is not None and not isinstance(ksm, Mapping):
        raise BadReply(f"{where}: 'ksm' is not an object")
    source = body.get("source")
    return HostMemory(
        **sizes,
        psi=None if psi is None else _psi(psi, f"{where} psi"),
        ksm=None if ksm is None else _ksm(ksm, f"{where} ksm"),
        source=source if isinstance(source, str) else "balloonctl serve",
    )


def _psi(body: Mapping[str, Any], where: str) -> Psi:
    def r(key: str) -> float:
        return _ratio(body, key, where)

    return Psi(r("some_avg10"), r("some_avg60"), r("some_avg300"),
               r("full_avg10"), r("full_avg60"), r("full_avg300"))


def _ksm(body: Mapping[str, Any], where: str) -> Ksm:
    run = body.get("run")
    if not isinstance(run, bool):
        raise BadReply(f"{where}: 'run' is not true or false")
    sharing, saved = _count(body, "pages_sharing", where), _count(body, "saved", where)
    # the service sends the bytes saved; the page size is what makes them from the pages
    page = saved // sharing if sharing and saved % sharing == 0 else 4096
    if sharing and page * sharing != saved:
        raise BadReply(f"{where}: 'saved' is not a whole number of pages_sharing pages")
    return Ksm(run, _count(body, "pages_shared", where), sharing, page)
