"""Every reply balloonctl reads from QEMU (QMP) and from the guest agent (qga), parsed into
typed values: the one place that looks inside them (STYLE habit 9). A hypervisor or a guest
can send anything; every wrong shape here is a clear error, never a ``KeyError`` later.

QMP (``qemu.qmp`` has already checked the envelope: a reply is an object with ``return``
or ``error``; these parse the ``return`` value, or an event message):

    ============================  =========================================  ==============
    command                       parser                                     value
    ============================  =========================================  ==============
    query-balloon                 ``balloon_actual``                         actual > 0
    query-memory-size-summary     ``base_memory``                            base-memory > 0
    qom-list                      ``qom_list``                               {name: type}
    qom-get guest-stats           ``guest_stats``                            GuestStats
    qom-get ...polling-interval   ``polling_interval``                       int >= 0
    qom-get <bool property>       ``qom_bool``                               bool
    qom-set, balloon              ``empty``                                  None ({})
    query-cpus-fast               ``vcpu0_thread``                           int | None
    (events) BALLOON_CHANGE, ...  ``event``                                  BalloonEvent
    ============================  =========================================  ==============

``parse_qmp`` runs one of them and turns a wrong shape into ``BadReply`` naming the command,
the argument and what came back (control characters escaped, long replies cut).

qga (line-delimited JSON, no envelope checking below us): ``envelope`` splits a reply into
its ``return`` value or its error; ``sync_id`` (guest-sync), ``guest_info``, ``exec_pid``
(guest-exec), ``exec_status`` (guest-exec-status, base64 decoded) and ``empty``
(guest-ping) parse the ``return`` value; ``parse_qga`` turns a wrong shape into
``BadAgentReply``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from balloonctl.errors import BadAgentReply, BadReply
from balloonctl.model import STAT_NOT_REPORTED, GuestStats
from balloonctl.text import escape_text

__all__ = [
    "STAT_FIELDS",
    "BalloonEvent",
    "ErrorReply",
    "ExecStatus",
    "GuestInfo",
    "Returned",
    "ShapeError",
    "balloon_actual",
    "base_memory",
    "describe",
    "empty",
    "envelope",
    "event",
    "exec_pid",
    "exec_status",
    "guest_info",
    "guest_stats",
    "parse_qga",
    "parse_qmp",
    "polling_interval",
    "qom_bool",
    "qom_list",
    "sync_id",
    "vcpu0_thread",
]

T = TypeVar("T")

# How much of a bad reply an error message shows.
_SHOWN: Final = 200
_U64_MAX: Final = 2**64 - 1
_I64_MAX: Final = 2**63 - 1


class ShapeError(ValueError):
    """A value of the wrong shape; ``parse_qmp``/``parse_qga`` add what was sent."""


def describe(value: Any) -> str:
    """``value`` as compact JSON for a one-line message: cut to 200 characters, control
    and format characters escaped (a guest string cannot drive the terminal)."""
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=repr)
    except (TypeError, ValueError):  # circular, or a NaN-like oddity
        text = repr(value)
    if len(text) > _SHOWN:
        text = text[:_SHOWN] + "..."
    return escape_text(text)


def _obj(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ShapeError(f"{what} is not an object")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ShapeError(f"{what} is not a list")
    return value


def _int(value: Any, what: str, *, low: int = 0, high: int = _U64_MAX) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ShapeError(f"{what} is not an integer")
    if not low <= value <= high:
        bound = f"at least {low}" if value < low else f"at most {high}"
        raise ShapeError(f"{what} is {value}, not {bound}")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ShapeError(f"{what} is not a string")
    return value


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ShapeError(f"{what} is not a boolean")
    return value


def _field(obj: Mapping[str, Any], key: str) -> Any:
    if key not in obj:
        raise ShapeError(f"no {key!r}")
    return obj[key]


# ---- QMP --------------------------------------------------------------------------------


def parse_qmp(parse: Callable[[Any], T], value: Any, *, cmd: str,
              args: Mapping[str, Any] | None = None, vm: str | None = None) -> T:
    """``parse(value)`` for the reply to ``cmd``.

    Raises:
        BadReply: the reply has the wrong shape (keeps the command and the reply).
    """
    try:
        return parse(value)
    except ShapeError as exc:
        sent = {"execute": cmd, "arguments": dict(args or {})}
        what = cmd
        if cmd == "qom-get" and args and isinstance(args.get("property"), str):
            what = f"qom-get {escape_text(args['property'])}"
        raise BadReply(f"QEMU sent a bad reply to {what}: {exc}: {describe(value)}", vm=vm,
                       sent=sent, received={"return": value}) from None


def balloon_actual(value: Any) -> int:
    """``query-balloon``: ``actual``, the guest RAM the balloon leaves (bytes, > 0)."""
    return _int(_field(_obj(value, "the reply"), "actual"), "'actual'", low=1, high=_I64_MAX)


def base_memory(value: Any) -> int:
    """``query-memory-size-summary``: ``base-memory``, the VM's RAM (bytes, > 0)."""
    obj = _obj(value, "the reply")
    return _int(_field(obj, "base-memory"), "'base-memory'", low=1, high=_I64_MAX)


def qom_list(value: Any) -> dict[str, str]:
    """``qom-list``: property and child names -> QOM type (``child<virtio-balloon-pci>``)."""
    found: dict[str, str] = {}
    for i, entry in enumerate(_list(value, "the reply")):
        obj = _obj(entry, f"entry {i}")
        found[_str(_field(obj, "name"), f"entry {i} 'name'")] = _str(
            _field(obj, "type"), f"entry {i} 'type'")
    return found


STAT_FIELDS: Final[Mapping[str, str]] = {
    "stat-swap-in": "swap_in",
    "stat-swap-out": "swap_out",
    "stat-major-faults": "major_faults",
    "stat-minor-faults": "minor_faults",
    "stat-free-memory": "free_memory",
    "stat-total-memory": "total_memory",
    "stat-available-memory": "available_memory",
    "stat-disk-caches": "disk_caches",
    "stat-htlb-pgalloc": "htlb_pgalloc",
    "stat-htlb-pgfail": "htlb_pgfail",
}


def guest_stats(value: Any) -> GuestStats:
    """``qom-get guest-stats``: ``{"stats": {name: u64}, "last-update": seconds}``.

    A stat the guest never sent (u64 -1) is None; stats this balloonctl does not know (a
    newer QEMU) land in ``extra``.
    """
    obj = _obj(value, "the reply")
    stats = _obj(_field(obj, "stats"), "'stats'")
    last = _int(_field(obj, "last-update"), "'last-update'", high=_I64_MAX)
    known: dict[str, int | None] = {}
    extra: dict[str, int] = {}
    for key, raw in stats.items():
        number = _int(raw, f"{escape_text(str(key))!r}")
        stat = None if number == STAT_NOT_REPORTED else number
        name = STAT_FIELDS.get(key)
        if name is not None:
            known[name] = stat
        elif stat is not None:
            extra[str(key)] = stat
    return GuestStats(last_update=last, extra=extra, **known)


def polling_interval(value: Any) -> int:
    """``qom-get guest-stats-polling-interval``: seconds, 0 = off."""
    return _int(value, "the interval", high=_I64_MAX)


def qom_bool(value: Any) -> bool:
    """``qom-get`` of a bool property (deflate-on-oom, reclaim-cache-first...)."""
    return _bool(value, "the value")


def empty(value: Any) -> None:
    """A command that returns nothing: QEMU (and qemu-ga) send ``{}``."""
    _obj(value, "the reply")


def vcpu0_thread(value: Any) -> int | None:
    """``query-cpus-fast``: vCPU 0's host thread id; None when no CPU 0 reports one."""
    for i, entry in enumerate(_list(value, "the reply")):
        cpu = _obj(entry, f"entry {i}")
        if _int(_field(cpu, "cpu-index"), f"entry {i} 'cpu-index'", high=_I64_MAX) != 0:
            continue
        if "thread-id" not in cpu:
            return None
        return _int(cpu["thread-id"], f"entry {i} 'thread-id'", high=_I64_MAX)
    return None


@dataclass(frozen=True, slots=True)
class BalloonEvent:
    """A QMP event as balloonctl passes it on. ``timestamp`` is QEMU's, in seconds.

    Events are notifications only: never state. BALLOON_CHANGE is rate-limited by QEMU.
    """

    name: str
    data: Mapping[str, Any] = field(default_factory=dict)
    timestamp: float = 0.0


def event(msg: Any) -> BalloonEvent:
    """A QMP event message: ``event`` name, ``timestamp`` {seconds, microseconds}, ``data``
    (an object when present; BALLOON_CHANGE's has ``actual`` > 0)."""
    obj = _obj(msg, "the event")
    name = _str(_field(obj, "event"), "'event'")
    stamp = _obj(_field(obj, "timestamp"), "'timestamp'")
    # QEMU sends -1/-1 when its clock failed.
    seconds = _int(_field(stamp, "seconds"), "'seconds'", low=-1, high=_I64_MAX)
    micros = _int(_field(stamp, "microseconds"), "'microseconds'", low=-1, high=999_999)
    data = dict(_obj(obj.get("data", {}), "'data'"))
    if name == "BALLOON_CHANGE":
        _int(_field(data, "actual"), "'actual'", low=1, high=_I64_MAX)
    return BalloonEvent(name, data, max(0, seconds) + max(0, micros) / 1e6)


def parse_event(msg: Any, *, vm: str | None = None) -> BalloonEvent:
    """``event(msg)``.

    Raises:
        BadReply: the event has the wrong shape (``received`` keeps it; ``sent`` is None).
    """
    try:
        return event(msg)
    except ShapeError as exc:
        shown = dict(msg) if isinstance(msg, Mapping) else msg
        raise BadReply(f"QEMU sent a malformed event: {exc}: {describe(shown)}", vm=vm,
                       received=shown) from None


# ---- the guest agent --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Returned:
    """A qga reply that succeeded: its ``return`` value, unparsed."""

    value: Any


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """A qga reply that failed: ``{"error": {"class": ..., "desc": ...}}``."""

    error_class: str
    desc: str


def envelope(reply: Any) -> Returned | ErrorReply:
    """Split one qga reply line into its ``return`` value or its error."""
    obj = _obj(reply, "the reply")
    if "error" in obj:
        err = _obj(obj["error"], "'error'")
        return ErrorReply(_str(err.get("class", "GenericError"), "'class'"),
                          _str(err.get("desc", ""), "'desc'"))
    return Returned(_field(obj, "return"))


def sync_id(reply: Any) -> int | None:
    """A guest-sync reply's id (``{"return": id}``); None for anything else, which is a
    leftover line of an earlier session to skip."""
    if isinstance(reply, Mapping):
        value = reply.get("return")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def parse_qga(parse: Callable[[Any], T], value: Any, *, cmd: str,
              args: Mapping[str, Any] | None = None, vm: str | None = None,
              path: str = "") -> T:
    """``parse(value)`` for the guest agent's reply to ``cmd``.

    Raises:
        BadAgentReply: the reply has the wrong shape (keeps the command and the reply).
    """
    try:
        return parse(value)
    except ShapeError as exc:
        sent = {"execute": cmd, **({"arguments": dict(args)} if args is not None else {})}
        where = f" at {escape_text(path)}" if path else ""
        raise BadAgentReply(f"the guest agent{where} sent a bad reply to {cmd}: {exc}: "
                            f"{describe(value)}", vm=vm, sent=sent, received=value) from None


@dataclass(frozen=True, slots=True)
class GuestInfo:
    """``guest-info``: the agent's version and its commands (name -> enabled)."""

    version: str
    commands: Mapping[str, bool]


def guest_info(value: Any) -> GuestInfo:
    """``guest-info``: ``{"version": str, "supported_commands": [{name, enabled}...]}``."""
    obj = _obj(value, "the reply")
    version = _str(obj.get("version", ""), "'version'")
    commands: dict[str, bool] = {}
    for i, entry in enumerate(_list(_field(obj, "supported_commands"),
                                    "'supported_commands'")):
        cmd = _obj(entry, f"command {i}")
        name = _str(_field(cmd, "name"), f"command {i} 'name'")
        commands[name] = _bool(cmd.get("enabled", True), f"command {i} 'enabled'")
    return GuestInfo(version, commands)


def exec_pid(value: Any) -> int:
    """``guest-exec``: ``{"pid": int}``, the guest process to ask about."""
    return _int(_field(_obj(value, "the reply"), "pid"), "'pid'", high=_I64_MAX)


@dataclass(frozen=True, slots=True)
class ExecStatus:
    """``guest-exec-status``. ``exitcode`` is None until the process exited, or when a
    signal (``signal``) ended it; ``stdout``/``stderr`` are the captured output, decoded."""

    exited: bool
    exitcode: int | None = None
    signal: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    truncated: bool = False


def _base64(value: Any, what: str) -> bytes:
    try:
        return base64.b64decode(_str(value, what), validate=True)
    except (binascii.Error, ValueError):
        raise ShapeError(f"{what} is not valid base64") from None


def exec_status(value: Any) -> ExecStatus:
    """``guest-exec-status``: ``{"exited": bool, "exitcode"?, "signal"?, "out-data"?,
    "err-data"? (base64), "out-truncated"?, "err-truncated"?}``."""
    obj = _obj(value, "the reply")
    exited = _bool(_field(obj, "exited"), "'exited'")
    code = obj.get("exitcode")
    sig = obj.get("signal")
    return ExecStatus(
        exited=exited,
        exitcode=None if code is None else _int(code, "'exitcode'", low=-(2**31),
                                                high=2**31 - 1),
        signal=None if sig is None else _int(sig, "'signal'", high=2**31 - 1),
        stdout=_base64(obj["out-data"], "'out-data'") if "out-data" in obj else b"",
        stderr=_base64(obj["err-data"], "'err-data'") if "err-data" in obj else b"",
        truncated=_bool(obj.get("out-truncated", False), "'out-truncated'")
        or _bool(obj.get("err-truncated", False), "'err-truncated'"),
    )
