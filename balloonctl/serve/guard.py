"""The ASGI layer in front of the API: the bearer token (TCP listeners) and the body limit.

A request that fails here never reaches a handler, so it changes nothing. The token is
compared in constant time and re-read when its file changes (``rotate`` needs no restart).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from balloonctl.http.wire import plain_error
from balloonctl.serve.paths import read_token, token_matches

__all__ = ["MAX_BODY", "Guard", "TokenFile"]

MAX_BODY = 64 * 1024  # bytes; every request body of the API is a few dozen


class TokenFile:
    """The expected token, read from ``path`` again whenever the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int] | None = None
        self._token: str | None = None

    def current(self) -> str | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None  # no token file: nobody gets in
        seen = (st.st_mtime_ns, st.st_ino)
        if seen != self._seen:
            try:
                self._token = read_token(self.path)
            except Exception:
                self._token = None
            self._seen = seen
        return self._token


async def _answer(send: Send, status: int, body: dict[str, Any],
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": data})


class Guard:
    """Wraps the app: 401 without the right ``Authorization: Bearer`` token (when ``token``
    is given), 413 for a body above ``max_body`` bytes (whatever Content-Length claims)."""

    def __init__(self, app: ASGIApp, *, token: TokenFile | None = None,
                 max_body: int = MAX_BODY) -> None:
        self.app = app
        self.token = token
        self.max_body = max_body

    def _authorized(self, scope: Scope) -> bool:
        if self.token is None:
            return True
        expected = self.token.current()
        header = b""
        for key, value in scope.get("headers", []):
            if key == b"authorization":
                header = value
        scheme, _, given = header.partition(b" ")
        # the comparison runs even for a wrong scheme, so timing says nothing about it
        matches = token_matches(given.strip(), expected or "\x00")
        return expected is not None and scheme.lower() == b"bearer" and matches

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self._authorized(scope):
            await _answer(send, 401, plain_error("unauthorized", "a valid bearer token is "
                                                 "required (Authorization: Bearer TOKEN)"),
                          [(b"www-authenticate", b'Bearer realm="balloonctl"')])
            return
        too_large = plain_error("body_too_large",
                                f"the request body is larger than {self.max_body} bytes")
        for key, value in scope.get("headers", []):
            if key == b"content-length" and value.isdigit() and int(value) > self.max_body:
                await _answer(send, 413, too_large)
                return
        # Read the whole body first (bodies are tiny), counting what actually arrives.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_body:
                await _answer(send, 413, too_large)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
