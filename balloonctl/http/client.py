"""``HttpSource``: a ``DataSource`` that talks to ``balloonctl serve`` (``balloonctl.serve``).

httpx failures are translated into ``balloonctl.errors`` here and nowhere else; errors the
server reports come back as the same error classes the server raised.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import quote

import httpx

from balloonctl.errors import BadReply, BalloonError, ConnectFailed, Disconnected, QMPTimeout
from balloonctl.http.wire import (
    API_PREFIX,
    AutoPlan,
    error_from_body,
    event_from_json,
    reclaimed_from_json,
    spec_text,
    stream_item_from_json,
)
from balloonctl.model import BalloonState, HintMode, HintState
from balloonctl.qmp import BalloonEvent
from balloonctl.units import TargetSpec

__all__ = ["HttpSource"]


class HttpSource:
    """The VMs of one ``balloonctl serve``, reached over HTTP.

    Give ``base_url`` (``http://host:8765``), or ``uds`` (a unix socket path; the URL's host
    is then only a label), or a ``transport`` (tests: ``httpx.ASGITransport``). ``token`` is
    sent as ``Authorization: Bearer``. ``timeout`` bounds every request except the event
    stream's waits between events. ``names`` is the inventory as last seen; ``open()`` or
    any ``snapshot()`` refreshes it.
    """

    def __init__(
        self,
        base_url: str = "http://balloonctl",
        *,
        uds: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 10.0,
        names: Sequence[str] = (),
        token: str | None = None,
    ) -> None:
        if transport is None and uds is not None:
            transport = httpx.AsyncHTTPTransport(uds=uds)
        self.base_url = base_url
        self.uds = uds
        self.timeout = timeout
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.AsyncClient(
            base_url=base_url, transport=transport, timeout=timeout, headers=headers
        )
        self._names: list[str] = list(names)

    @classmethod
    async def open(cls, base_url: str = "http://balloonctl", **kw: Any) -> HttpSource:
        """A source with its inventory already fetched.

        Raises:
            ConnectFailed, Disconnected, QMPTimeout: the agent cannot be reached;
            BalloonError: the agent answered with an error.
        """
        source = cls(base_url, **kw)
        try:
            body = await source._request("GET", "/names")
        except BaseException:
            await source.close()
            raise
        source._names = [str(n) for n in body["names"]]
        return source

    @property
    def names(self) -> Sequence[str]:
        return self._names

    @property
    def where(self) -> str:
        return f"unix:{self.uds}" if self.uds else self.base_url

    def _fail(self, exc: httpx.HTTPError, path: str) -> BalloonError:
        where = f"{self.where}{API_PREFIX}{path}"
        if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError):
            return ConnectFailed(f"cannot connect to balloonctl serve at {where}: {exc}")
        if isinstance(exc, httpx.TimeoutException):
            return QMPTimeout(f"balloonctl serve at {where} did not answer within "
                              f"{self.timeout:g}s")
        return Disconnected(f"HTTP request to {where} failed: {exc or type(exc).__name__}")

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                       params: dict[str, Any] | None = None) -> Any:
        try:
            response = await self._client.request(method, API_PREFIX + path, json=body,
                                                   params=params)
        except httpx.HTTPError as exc:
            raise self._fail(exc, path) from exc
        return self._decode(response)

    def _decode(self, response: httpx.Response) -> Any:
        try:
            data = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = None
        if response.is_error:
            raise error_from_body(data if isinstance(data, dict) else {}, response.status_code)
        if data is None:
            raise BalloonError(
                f"balloonctl serve answered {response.request.url.path} with non-JSON"
            )
        return data

    # -- DataSource -------------------------------------------------------------------------
    async def snapshot(self) -> list[BalloonState]:
        """Raises: ConnectFailed, Disconnected, QMPTimeout, BalloonError (see ``open``)."""
        states = [BalloonState.from_json(item) for item in await self._request("GET", "/vms")]
        self._names = [s.name for s in states]
        return states

    async def state(self, name: str) -> BalloonState:
        """One VM's latest state. Raises: UnknownVM, or a connection error as in ``open``."""
        return BalloonState.from_json(await self._request("GET", f"/vms/{quote(name)}"))

    async def set_target(self, name: str, spec: TargetSpec, *, force: bool = False,
                         origin: str | None = None) -> int:
        """Raises: what the service's source raised (UnsafeTarget, UnknownVM...), or a
        connection error as in ``open``."""
        body: dict[str, Any] = {"size": spec_text(spec), "force": force}
        if origin is not None:
            body["origin"] = origin
        reply = await self._request("POST", f"/vms/{quote(name)}/target", body)
        return int(reply["target"])

    async def set_hint(self, name: str, on: bool) -> HintState:
        """Raises: HintUnsupported, UnknownVM..., or a connection error as in ``open``."""
        hint = (await self._request("POST", f"/vms/{quote(name)}/hint", {"on": on}))["hint"]
        return HintState(
            mode=HintMode(hint.get("mode", "unknown")),
            enabled=bool(hint.get("enabled")),
            detail=hint.get("detail") or "",
            released=hint.get("released"),
        )

    async def enable_stats(self, name: str, interval: int) -> None:
        """Raises: UnknownVM, QMPCommandError..., or a connection error as in ``open``."""
        await self._request("POST", f"/vms/{quote(name)}/stats", {"interval": interval})

    async def reclaim(self, name: str) -> bool:
        """Take the VM back from another writer, so the service's auto manages it again
        (``POST /v1/vms/NAME/reclaim``); False when it was not marked as moved.

        Raises: UnknownVM, Unavailable-coded BalloonError (the service has no auto),
        BadReply (an answer of the wrong shape), or a connection error as in ``open``."""
        path = f"/vms/{quote(name, safe='')}/reclaim"
        return reclaimed_from_json(await self._request("POST", path, {}), name,
                                   f"POST {API_PREFIX}{path}")

    async def get(self, path: str, **params: Any) -> Any:
        """``GET /v1{path}``'s JSON (``/host``, ``/plan``, ``/history``, ``/auto``...).

        Raises: the service's error (as its class), or a connection error as in ``open``.
        """
        return await self._request("GET", path, params={k: v for k, v in params.items()
                                                       if v is not None} or None)

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        """``POST /v1{path}`` with ``body``; its JSON. Raises: as ``get``."""
        return await self._request("POST", path, body)

    async def events(self) -> AsyncIterator[tuple[str, BalloonEvent]]:
        """The agent's event stream; ends when the agent ends it.

        Raises: a connection error as in ``open``; BadReply: a line that is not an event.
        """
        async for body in self._lines("/events"):
            yield event_from_json(body)

    async def feed(self) -> AsyncIterator[AutoPlan | tuple[str, BalloonEvent]]:
        """``GET /v1/stream?snapshots=false``: events as they happen (QMP, connections,
        auto's changes) and auto's plan after every cycle (the last one first); ends when
        the service ends it.

        Raises: a connection error as in ``open``; BadReply: a line that is not the shape
        the service sends (``http.wire.stream_item_from_json``).
        """
        async for body in self._lines("/stream", {"snapshots": "false"}):
            item = stream_item_from_json(body)
            if item is not None:
                yield item

    async def _lines(self, path: str, params: dict[str, str] | None = None
                     ) -> AsyncIterator[Any]:
        """Each NDJSON line of ``GET /v1{path}``, decoded. Raises: as ``feed``."""
        timeout = httpx.Timeout(self.timeout, read=None)
        try:
            async with self._client.stream("GET", API_PREFIX + path, params=params,
                                           timeout=timeout) as resp:
                if resp.is_error:
                    await resp.aread()
                    self._decode(resp)
                async for line in resp.aiter_lines():
                    if not line.strip():
                        continue
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError:
                        raise BadReply(f"GET {API_PREFIX}{path} at {self.where}: a line is "
                                       f"not JSON: {line!r:.60}") from None
        except httpx.HTTPError as exc:
            raise self._fail(exc, path) from exc

    async def close(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> HttpSource:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
