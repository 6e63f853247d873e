"""What server and client agree on: error kinds and status codes, and event encoding.

No third-party imports here, so both sides (and tests) share it cheaply.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from balloonctl import errors
from balloonctl.auto import AppliedChange, ForeignMove
from balloonctl.errors import BadReply, BalloonError
from balloonctl.host import HostMemory, Ksm, Psi
from balloonctl.model import BalloonState
from balloonctl.policy import Action, Decision
from balloonctl.qmp import BalloonEvent
from balloonctl.units import SizeKind, TargetSpec

if TYPE_CHECKING:
    from balloonctl.auto import Cycle

__all__ = [
    "API_PREFIX",
    "AUTO_CHANGE",
    "AUTO_FAILED",
    "AUTO_FOREIGN",
    "CODE_STATUS",
    "AutoPlan",
    "auto_enabled_from_json",
    "auto_plan_json",
    "code_for",
    "cycle_events",
    "decision_from_json",
    "error_body",
    "error_from_body",
    "event_from_json",
    "event_to_json",
    "host_from_json",
    "plain_error",
    "reclaimed_from_json",
    "spec_text",
    "status_for",
    "stream_item_from_json",
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


def event_from_json(body: Any, where: str = "GET /v1/events") -> tuple[str, BalloonEvent]:
    """One event line (``event_to_json``'s shape) as the VM's name and its event; auto's
    events (``AUTO_CHANGE``, ``AUTO_FOREIGN``, ``AUTO_FAILED``) with their data parsed:
    ``data["change"]`` an ``AppliedChange``, ``data["move"]`` a ``ForeignMove``,
    ``data["error"]`` the failure's text.

    Raises:
        BadReply: not the shape the service sends (``where`` names the request).
    """
    if not isinstance(body, Mapping):
        raise BadReply(f"{where}: an event is not an object: {body!r:.40}")
    vm, name, raw = body.get("vm"), body.get("event"), body.get("data")
    if not isinstance(vm, str) or not vm:
        raise BadReply(f"{where}: an event's 'vm' is not a name: {vm!r:.40}")
    if not isinstance(name, str) or not name:
        raise BadReply(f"{where}: {vm}: the event's name is not a string: {name!r:.40}")
    if raw is not None and not isinstance(raw, Mapping):
        raise BadReply(f"{where}: {vm} {name}: 'data' is not an object")
    stamp = body.get("timestamp") or 0.0
    if isinstance(stamp, bool) or not isinstance(stamp, int | float):
        raise BadReply(f"{where}: {vm} {name}: 'timestamp' is not a number: {stamp!r:.40}")
    data = dict(raw or {})
    here = f"{where}: {vm} {name}"
    state = data.get("state")
    if isinstance(state, dict):
        try:
            data["state"] = BalloonState.from_json(state)
        except (KeyError, TypeError, ValueError) as exc:
            raise BadReply(f"{here}: 'state' is not a VM's state: {exc}") from None
    if name == AUTO_CHANGE:
        data["change"] = AppliedChange(
            vm, _action(data, here), _size_or_none(data, "previous", here),
            _count(data, "target", here), _text(data, "reason", here))
    elif name == AUTO_FOREIGN:
        data["move"] = ForeignMove(vm, _size_or_none(data, "previous", here),
                                   _count(data, "actual", here), _text(data, "why", here))
    elif name == AUTO_FAILED:
        _text(data, "error", here)
    return vm, BalloonEvent(name, data, float(stamp))


# -- automatic ballooning on the stream (docs/serve.md: GET /v1/stream) ----------------------
AUTO_CHANGE = "AUTO_CHANGE"  # a target auto sent (and journaled)
AUTO_FOREIGN = "AUTO_FOREIGN"  # a move by another writer auto found (journaled once)
AUTO_FAILED = "AUTO_FAILED"  # a target auto could not send


@dataclass(frozen=True, slots=True)
class AutoPlan:
    """A service's latest auto cycle, as its stream announces it: the cycle's ``number``,
    whether the service applies the decisions (``enabled``), every VM's decision."""

    number: int
    enabled: bool
    decisions: tuple[Decision, ...]
    time: float = 0.0


def auto_plan_json(label: str, time: float, number: int, enabled: bool,
                   decisions: Sequence[Decision]) -> dict[str, Any]:
    """The stream's ``{"type": "auto", ...}`` line of one cycle."""
    return {"type": "auto", "host": label, "time": time, "cycle": number,
            "enabled": enabled, "decisions": [d.to_json() for d in decisions]}


def auto_enabled_from_json(body: Any, where: str = "POST /v1/auto") -> bool:
    """Whether auto is on, from a ``/v1/auto`` answer. Raises: BadReply: no such answer."""
    enabled = body.get("enabled") if isinstance(body, Mapping) else None
    if not isinstance(enabled, bool):
        raise BadReply(f"{where}: 'enabled' is not true or false: {enabled!r:.40}")
    return enabled


def reclaimed_from_json(body: Any, name: str,
                        where: str = "POST /v1/vms/NAME/reclaim") -> bool:
    """Whether the service took ``name`` back from another writer, from its ``{"name",
    "reclaimed"}`` answer. Raises: BadReply: not that answer, or about another VM."""
    if not isinstance(body, Mapping):
        raise BadReply(f"{where}: expected an object, got {type(body).__name__}")
    if body.get("name") != name:
        raise BadReply(f"{where}: 'name' is not {name!r}: {body.get('name')!r:.40}")
    reclaimed = body.get("reclaimed")
    if not isinstance(reclaimed, bool):
        raise BadReply(f"{where}: 'reclaimed' is not true or false: {reclaimed!r:.40}")
    return reclaimed


def cycle_events(cycle: Cycle, time: float) -> list[tuple[str, BalloonEvent]]:
    """What one auto cycle did, as events: each target sent, each foreign move found, each
    VM it failed to move (``event_from_json`` reads them back)."""
    out: list[tuple[str, BalloonEvent]] = []
    for c in cycle.applied:
        out.append((c.name, BalloonEvent(AUTO_CHANGE, {
            "action": c.action.value, "previous": c.previous, "target": c.target,
            "reason": c.reason}, time)))
    for m in cycle.foreign:
        out.append((m.name, BalloonEvent(AUTO_FOREIGN, {
            "previous": m.previous, "actual": m.actual, "why": m.why}, time)))
    for name, exc in cycle.failed.items():
        out.append((name, BalloonEvent(AUTO_FAILED, {"error": exc.message}, time)))
    return out


def decision_from_json(body: Any, where: str) -> Decision:
    """One decision (``Decision.to_json``'s shape).

    Raises:
        BadReply: not that shape.
    """
    if not isinstance(body, Mapping):
        raise BadReply(f"{where}: a decision is not an object: {body!r:.40}")
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise BadReply(f"{where}: a decision's 'name' is not a VM name: {name!r:.40}")
    here = f"{where}: {name}"
    return Decision(name, _action(body, here), _size_or_none(body, "target", here),
                    _size_or_none(body, "current", here), _text(body, "reason", here))


def stream_item_from_json(body: Any, where: str = "GET /v1/stream"
                          ) -> AutoPlan | tuple[str, BalloonEvent] | None:
    """One line of the service's stream: an ``AutoPlan`` (``"type": "auto"``), an event (as
    ``event_from_json``), or None for a snapshot or a type this client does not know.

    Raises:
        BadReply: a line of a known type that is not its shape.
    """
    if not isinstance(body, Mapping):
        raise BadReply(f"{where}: a line is not an object: {body!r:.40}")
    kind = body.get("type")
    if kind == "event":
        return event_from_json(body, where)
    if kind != "auto":
        return None
    here = f"{where} auto"
    number, enabled = body.get("cycle"), body.get("enabled")
    if isinstance(number, bool) or not isinstance(number, int) or number < 0:
        raise BadReply(f"{here}: 'cycle' is not a cycle number: {number!r:.40}")
    if not isinstance(enabled, bool):
        raise BadReply(f"{here}: 'enabled' is not true or false: {enabled!r:.40}")
    decisions = body.get("decisions")
    if not isinstance(decisions, list):
        raise BadReply(f"{here}: 'decisions' is not a list: {decisions!r:.40}")
    stamp = body.get("time") or 0.0
    if isinstance(stamp, bool) or not isinstance(stamp, int | float):
        raise BadReply(f"{here}: 'time' is not a number: {stamp!r:.40}")
    return AutoPlan(number, enabled, tuple(
        decision_from_json(d, f"{here} decisions[{i}]") for i, d in enumerate(decisions)),
        float(stamp))


def _action(body: Mapping[str, Any], where: str) -> Action:
    value = body.get("action")
    try:
        return Action(str(value)) if isinstance(value, str) else Action("")
    except ValueError:
        known = ", ".join(a.value for a in Action)
        raise BadReply(f"{where}: 'action' is not one of {known}: {value!r:.40}") from None


def _text(body: Mapping[str, Any], key: str, where: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise BadReply(f"{where}: {key!r} is not text: {value!r:.40}")
    return value


def _size_or_none(body: Mapping[str, Any], key: str, where: str) -> int | None:
    return None if body.get(key) is None else _count(body, key, where)


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
