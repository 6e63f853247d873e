"""The QMP/QGA wire format: incremental JSON framing, encoding, errors and events.

QEMU's JSON streamer splits the byte stream by brace depth, not by lines: clients
(qemu.qmp included) send compact JSON without a trailing newline. Server messages end
with a newline (QMP's monitor writes ``\\r\\n``, qemu-ga writes ``\\n``).
"""

from __future__ import annotations

import codecs
import json
import time
from typing import Any, Final

__all__ = [
    "JSONStream",
    "ParseError",
    "QMPError",
    "check_args",
    "encode",
    "event",
    "timestamp",
]

# Refuse a single message larger than this (QEMU's limit is far larger; a fake needs none).
_MAX_MESSAGE = 1 << 20
_WHITESPACE: Final = " \t\r\n"


class QMPError(Exception):
    """A command failed; becomes ``{"error": {"class": ..., "desc": ...}}`` on the wire."""

    def __init__(self, desc: str, error_class: str = "GenericError") -> None:
        super().__init__(desc)
        self.desc = desc
        self.error_class = error_class

    def to_wire(self) -> dict[str, Any]:
        return {"class": self.error_class, "desc": self.desc}


class ParseError:
    """One piece of input that is not JSON (what QEMU answers with a parse error)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"ParseError({self.text!r})"


class JSONStream:
    """Split a byte stream into JSON values as they complete.

    ``feed(data)`` returns every value completed by ``data`` (decoded objects, or
    ``ParseError`` for junk). A value may arrive split across any number of reads.
    Bytes 0xFF reset the parser, as qemu-ga's lexer does (``guest-sync-delimited``).
    """

    __slots__ = ("_buf", "_decoder", "_depth", "_escape", "_in_string", "_scan", "_utf8")

    def __init__(self) -> None:
        self._decoder = json.JSONDecoder()
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buf = ""
        self._scan = 0  # index in _buf up to which depth/string state is known
        self._depth = 0
        self._in_string = False
        self._escape = False

    def reset(self) -> None:
        self._utf8.reset()
        self._buf = ""
        self._scan = 0
        self._depth = 0
        self._in_string = False
        self._escape = False

    def feed(self, data: bytes) -> list[Any]:
        if b"\xff" not in data:
            return self._feed(data)
        first, *rest = data.split(b"\xff")
        out = self._feed(first)
        for part in rest:
            self.reset()
            out += self._feed(part)
        return out

    def _feed(self, data: bytes) -> list[Any]:
        out: list[Any] = []
        self._buf += self._utf8.decode(data)
        start = 0
        buf = self._buf
        i = self._scan
        n = len(buf)
        while i < n:
            ch = buf[i]
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif ch == "\\":
                    self._escape = True
                elif ch == '"':
                    self._in_string = False
                    if self._depth == 0:  # a bare string: JSON, but not a command
                        out.append(self._decode(buf[start : i + 1]))
                        start = i + 1
            elif ch == '"':
                if self._depth == 0:
                    start = i
                self._in_string = True
            elif ch in "{[":
                if self._depth == 0:
                    start = i
                self._depth += 1
            elif ch in "}]":
                if self._depth == 0:
                    out.append(ParseError(f"stray '{ch}'"))
                    start = i + 1
                else:
                    self._depth -= 1
                    if self._depth == 0:
                        out.append(self._decode(buf[start : i + 1]))
                        start = i + 1
            elif self._depth == 0 and ch not in _WHITESPACE:
                end = self._token_end(buf, i)
                if end == n:  # the token may go on in the next read, as QEMU's lexer waits
                    start = i
                    break
                out.append(self._scalar(buf[i:end]))
                start = i = end
                continue
            i += 1
        self._buf = buf[start:]
        self._scan = i - start
        if len(self._buf) > _MAX_MESSAGE:
            out.append(ParseError("message too long"))
            self.reset()
        return out

    @staticmethod
    def _token_end(buf: str, i: int) -> int:
        while i < len(buf) and buf[i] not in _WHITESPACE and buf[i] not in '{["':
            i += 1
        return i

    @staticmethod
    def _scalar(token: str) -> Any:
        """A top-level token outside braces: a number or keyword (valid JSON, though no
        command) or junk."""
        try:
            return json.loads(token)
        except ValueError:
            what = "invalid keyword" if token.isalpha() else "stray"
            return ParseError(f"{what} '{token}'")

    def _decode(self, text: str) -> Any:
        try:
            value, _ = self._decoder.raw_decode(text)
        except json.JSONDecodeError as exc:
            return ParseError(f"{exc.msg[0].lower()}{exc.msg[1:]} at offset {exc.pos}")
        return value


_TYPE_NAMES = {
    int: "integer",
    str: "string",
    bool: "boolean",
    dict: "object",
    list: "array",
}


def check_args(
    args: dict[str, Any], required: dict[str, type], optional: dict[str, type] | None = None
) -> None:
    """Validate command arguments like QEMU's QAPI input visitor (``object`` means any).

    Raises:
        QMPError: a missing, unexpected or mistyped argument, with QEMU's message.
    """
    optional = optional or {}
    for name, kind in (*required.items(), *optional.items()):
        if name not in args:
            if name in required:
                raise QMPError(f"Parameter '{name}' is missing")
            continue
        value = args[name]
        if kind is object:
            continue
        # JSON true/false are not integers to QAPI, although bool is an int in Python.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise QMPError(
                f"Invalid parameter type for '{name}', expected: {_TYPE_NAMES.get(kind, 'any')}"
            )
    for name in args:
        if name not in required and name not in optional:
            raise QMPError(f"Parameter '{name}' is unexpected")


def encode(msg: Any, *, crlf: bool = True) -> bytes:
    """One server message: JSON with QEMU's ``", "``/``": "`` separators and a newline."""
    return (json.dumps(msg) + ("\r\n" if crlf else "\n")).encode()


def timestamp(wall: float | None = None) -> dict[str, int]:
    """QMP's event timestamp: host wall-clock seconds and microseconds."""
    now = time.time() if wall is None else wall
    seconds = int(now)
    return {"seconds": seconds, "microseconds": int((now - seconds) * 1_000_000)}


def event(
    name: str, data: dict[str, Any] | None = None, *, wall: float | None = None
) -> dict[str, Any]:
    msg: dict[str, Any] = {"event": name}
    if data is not None:
        msg["data"] = data
    msg["timestamp"] = timestamp(wall)
    return msg
