"""The QMP monitor socket: greeting, capabilities negotiation, commands and events."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from balloonctl.fake.faults import Faults
from balloonctl.fake.machine import QEMU_VERSION, Machine
from balloonctl.fake.server import JSONServer
from balloonctl.fake.wire import QMPError, event

__all__ = ["GREETING", "EventThrottle", "QMPServer"]

GREETING: dict[str, Any] = {"QMP": {"version": QEMU_VERSION, "capabilities": ["oob"]}}

# QEMU's monitor throttles these events to one per second (monitor_qapi_event_conf).
_THROTTLE_SECONDS = 1.0


class EventThrottle:
    """QEMU's per-event rate limit: the first event goes out at once; events within the
    following second are held, the last one wins and goes out when the second is over
    (with the timestamp of when it happened)."""

    __slots__ = ("_next", "_pending", "_pending_wall", "_send", "name")

    def __init__(self, name: str, send: Callable[[dict[str, Any]], None]) -> None:
        self.name = name
        self._send = send
        self._next = float("-inf")
        self._pending: dict[str, Any] | None = None
        self._pending_wall = 0.0

    def emit(self, data: dict[str, Any], now: float, wall: float) -> None:
        if now >= self._next:
            self._send(event(self.name, data, wall=wall))
            self._next = now + _THROTTLE_SECONDS
            self._pending = None
        else:
            self._pending = data
            self._pending_wall = wall

    def flush(self, now: float) -> None:
        """Called from the timer: send the held event once the second is over."""
        if self._pending is not None and now >= self._next:
            self._send(event(self.name, self._pending, wall=self._pending_wall))
            self._pending = None
            self._next = now + _THROTTLE_SECONDS


class QMPServer(JSONServer):
    """One VM's QMP socket (``-qmp unix:PATH,server=on,wait=off``)."""

    crlf = True

    def __init__(
        self,
        path: Path,
        machine: Machine,
        faults: Faults,
        *,
        on_quit: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(path, faults)
        self.machine = machine
        self.on_quit = on_quit
        self.negotiated = False
        self.oob = False
        self.balloon_change = EventThrottle("BALLOON_CHANGE", self.send_event)

    def send_event(self, msg: dict[str, Any]) -> None:
        """Deliver an event to the client, if one is past capabilities negotiation
        (QEMU sends no events to a monitor still negotiating)."""
        if self.negotiated:
            bad = self.faults.bad_event
            if bad and msg.get("event") in bad:
                msg = bad[msg["event"]]
            self.send(msg)

    @property
    def allow_oob(self) -> bool:
        return self.oob

    async def on_session_start(self, writer: asyncio.StreamWriter) -> bool:
        self.negotiated = False
        self.oob = False
        if self.faults.never_greet:
            return False
        self.send(GREETING)
        return True

    def on_session_end(self) -> None:
        self.negotiated = False
        self.oob = False

    def command(self, name: str, args: dict[str, Any]) -> Any:
        if name == "qmp_capabilities":
            return self._qmp_capabilities(args)
        if not self.negotiated:
            # monitor_qmp_dispatch replaces CommandNotFound's text while negotiating.
            raise QMPError(
                "Expecting capabilities negotiation with 'qmp_capabilities'", "CommandNotFound"
            )
        if name == "quit":
            if args:
                raise QMPError(f"Parameter '{next(iter(args))}' is unexpected")
            if self.on_quit is not None:
                self.close_after_reply(self.on_quit)
            else:
                self.close_after_reply()
            return {}
        return self.machine.execute(name, args)

    def _qmp_capabilities(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.negotiated:
            raise QMPError(
                "Capabilities negotiation is already complete, command ignored",
                "CommandNotFound",
            )
        for key, value in args.items():
            if key != "enable":
                raise QMPError(f"Parameter '{key}' is unexpected")
            if not isinstance(value, list):
                raise QMPError("Invalid parameter type for 'enable', expected: array")
            for i, cap in enumerate(value):
                if cap != "oob":
                    raise QMPError(f"Parameter 'enable[{i}]' does not accept value '{cap}'")
            self.oob = bool(value)
        self.negotiated = True
        return {}
