"""Commands through ``balloonctl serve`` instead of the VMs' QMP sockets.

When the local service's socket exists (``serve.paths.default_socket``; set
``$BALLOONCTL_SERVE_SOCKET=off`` to ignore it; a socket nobody listens on is ignored too)
and no ``--qmp``/``--dir`` names VMs
directly, ``status``, ``set`` and ``hint`` ask the service: they never fight it for a QMP
socket. ``--host URL`` (repeatable) asks remote services; their token comes from
``$BALLOONCTL_TOKEN``, else the config's ``[hosts]`` entry for that service, else the
local token file. With several services, VMs are named
``HOST/VM`` and patterns may name a host (``hv2/web-*``).
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

from balloonctl.errors import BalloonError, UnknownVM, UsageError
from balloonctl.model import BalloonState

if TYPE_CHECKING:
    from balloonctl.http.client import HttpSource
    from balloonctl.settings import Config

__all__ = ["Endpoint", "endpoints", "remote_each", "remote_states"]

T = TypeVar("T")
OFF = "off"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One service: a ``url`` (``--host``) or the local unix socket ``uds``."""

    label: str
    url: str = "http://balloonctl"
    uds: str | None = None
    token: str | None = None

    def source(self, timeout: float = 10.0) -> HttpSource:
        from balloonctl.http.client import HttpSource

        return HttpSource(self.url, uds=self.uds, token=self.token, timeout=timeout)


def host_endpoint(url: str, token: str | None) -> Endpoint:
    """Raises: UsageError: not an http(s) URL with a host."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    try:
        parts.port  # noqa: B018 - a port that is not a number raises here
    except ValueError:
        parts = parts._replace(netloc="")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--host {url!r}: expected a URL such as http://hv1:8765")
    return Endpoint(label=parts.hostname, url=f"{parts.scheme}://{parts.netloc}", token=token)


def endpoints(hosts: Sequence[str], *, direct: bool,
              config: Callable[[], Config] | None = None) -> list[Endpoint] | None:
    """The services to ask, or None to talk QMP directly. ``direct`` is True when VMs were
    named on the command line (``--qmp``/``--dir``). ``config()`` gives the config whose
    ``[hosts]`` tokens a ``--host`` uses when ``$BALLOONCTL_TOKEN`` is not set.

    Raises:
        UsageError: a bad ``--host`` URL, ``$BALLOONCTL_TOKEN``, config, or configured
            token (file).
    """
    from balloonctl.serve.paths import (
        ENV_SOCKET,
        ENV_TOKEN,
        client_token,
        default_socket,
        listening,
    )

    if hosts:
        cfg = None if config is None or os.environ.get(ENV_TOKEN) else config()
        found = [host_endpoint(h, None) for h in hosts]
        found = [Endpoint(label=e.label, url=e.url, token=client_token(
            configured=None if cfg is None else cfg.host_token(e.url))) for e in found]
        labels = [e.label for e in found]
        if len(set(labels)) < len(labels):  # two ports on one host: label by host:port
            found = [Endpoint(label=urlsplit(e.url).netloc, url=e.url, token=e.token)
                     for e in found]
        return found
    if direct or os.environ.get(ENV_SOCKET) == OFF:
        return None
    sock = default_socket()
    if not sock.is_socket() or not listening(sock):
        return None  # no service, or a socket left by one that died: talk QMP directly
    return [Endpoint(label="local", uds=str(sock))]



def _matches(display: str, name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(display if "/" in pattern else name, pattern)


async def _gather(eps: Sequence[Endpoint],
                  fn: Callable[[HttpSource], Awaitable[T]]) -> list[T]:
    async def one(ep: Endpoint) -> T:
        async with ep.source() as source:
            return await fn(source)

    return list(await asyncio.gather(*(one(ep) for ep in eps)))


def _select(eps: Sequence[Endpoint], found: Sequence[Sequence[str]], patterns: Sequence[str],
            all_vms: bool) -> list[tuple[int, str, str]]:
    """(endpoint index, VM name, display name) of every VM chosen, in service order."""
    many = len(eps) > 1
    every = [(i, n, f"{eps[i].label}/{n}" if many else n)
             for i, names in enumerate(found) for n in names]
    if all_vms or not patterns:
        return every
    chosen: list[tuple[int, str, str]] = []
    for pattern in patterns:
        hits = [item for item in every if _matches(item[2], item[1], pattern)]
        if not hits:
            where = ", ".join(e.label for e in eps)
            raise UnknownVM(f"no VM matches {pattern!r} on balloonctl serve ({where})")
        chosen += [h for h in hits if h not in chosen]
    return chosen


async def remote_states(eps: Sequence[Endpoint], patterns: Sequence[str],
                        all_vms: bool = False) -> list[BalloonState]:
    """The selected VMs' latest states from the services (named ``HOST/VM`` with several).

    Raises:
        UnknownVM: a pattern matches no VM; ConnectFailed...: a service cannot be reached.
    """
    per_host = await _gather(eps, lambda s: s.snapshot())
    by_key = {(i, s.name): s for i, states in enumerate(per_host) for s in states}
    chosen = _select(eps, [[s.name for s in states] for states in per_host], patterns, all_vms)
    return [by_key[i, name].with_changes(name=display) for i, name, display in chosen]


async def remote_each(eps: Sequence[Endpoint], patterns: Sequence[str], all_vms: bool,
                      fn: Callable[[HttpSource, str], Awaitable[T]]
                      ) -> dict[str, T | BalloonError]:
    """``fn(source, vm)`` for every selected VM, concurrently; each VM's result or error
    (named with its display name), in service order.

    Raises:
        UnknownVM, ConnectFailed...: as ``remote_states`` (before anything is changed).
    """
    names = await _gather(eps, lambda s: s.get("/names"))
    chosen = _select(eps, [list(n["names"]) for n in names], patterns, all_vms)
    sources = [ep.source() for ep in eps]

    async def one(i: int, name: str, display: str) -> T | BalloonError:
        try:
            return await fn(sources[i], name)
        except BalloonError as exc:
            exc.vm = display
            return exc

    try:
        results = await asyncio.gather(*(one(*item) for item in chosen))
    finally:
        for source in sources:
            await source.close()
    return {display: result for (_, _, display), result in zip(chosen, results, strict=True)}
