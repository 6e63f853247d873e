"""Serving the API with uvicorn on sockets balloonctl binds itself.

uvicorn would ``chmod 0666`` a unix socket it creates, so the socket is bound here: mode 0600
in a 0700 directory, under a temporary name that is renamed into place once the service has
started (the socket appearing means the service answers). TCP listens on loopback unless
``allow_remote``; every TCP request needs the bearer token (``serve.guard``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
import socket
import stat
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from balloonctl.errors import UsageError
from balloonctl.serve.api import create_app
from balloonctl.serve.guard import Guard, TokenFile
from balloonctl.serve.paths import listening
from balloonctl.serve.service import HostService

__all__ = ["Listener", "bind_tcp", "bind_unix", "parse_listen", "serve"]


@dataclass(frozen=True, slots=True)
class Listener:
    """Where the service listens: a unix socket ``path``, or TCP ``host``:``port``."""

    path: Path | None = None
    host: str | None = None
    port: int | None = None

    @property
    def url(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def parse_listen(text: str) -> tuple[str, int]:
    """``127.0.0.1:8765`` or ``[::1]:8765`` -> (host, port).

    Raises:
        UsageError: not HOST:PORT with a port 0..65535.
    """
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise UsageError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8765")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_remote(host: str, *, allow_remote: bool) -> None:
    """Raises: UsageError: ``host`` is not a loopback address and ``allow_remote`` is off."""
    if not is_loopback(host) and not allow_remote:
        raise UsageError(f"--listen {host}: not a loopback address; add --allow-remote to "
                         "serve other machines (every request then needs the token)")


def _private_dir(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = directory.stat()
    except OSError as exc:
        raise UsageError(f"cannot use {directory}: {exc.strerror or exc}") from None
    if st.st_uid != os.geteuid():
        raise UsageError(f"{directory} belongs to another user; choose another socket path")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(directory, 0o700)



def bind_unix(path: Path) -> tuple[socket.socket, Path]:
    """A listening unix socket (mode 0600) bound to a temporary name beside ``path``;
    returns it and that name (rename it to ``path`` when ready).

    Raises:
        UsageError: another service listens on ``path``, ``path`` is not a socket, or the
            directory cannot be used.
    """
    _private_dir(path.parent)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise UsageError(f"{path} exists and is not a socket; remove it or choose another")
        if listening(path):
            raise UsageError(f"another balloonctl serve is listening on {path}")
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(temp))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old)
    os.chmod(temp, 0o600)
    sock.listen(128)
    sock.setblocking(False)
    return sock, temp


def bind_tcp(host: str, port: int, *, allow_remote: bool) -> socket.socket:
    """A listening TCP socket. Port 0 picks a free port (``getsockname`` tells which).

    Raises:
        UsageError: a non-loopback address without ``allow_remote``, or the address cannot
            be bound.
    """
    check_remote(host, allow_remote=allow_remote)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def serve(service: HostService, *, path: Path | None = None,
                tcp: tuple[str, int] | None = None, token_file: Path | None = None,
                allow_remote: bool = False,
                ready: Callable[[Listener], None] | None = None) -> None:
    """Serve ``service`` until SIGINT/SIGTERM or until the task is cancelled: on the unix
    socket ``path``, or on ``tcp`` with the token in ``token_file``. ``ready`` is called
    once the service has started and the socket is in place.

    Raises:
        UsageError: as ``bind_unix``/``bind_tcp``; TCP without a token file.
    """
    import uvicorn

    if (path is None) == (tcp is None):
        raise UsageError("serve on a unix socket or on TCP, not both")
    temp: Path | None = None
    if path is not None:
        sock, temp = bind_unix(path)
        listener = Listener(path=path)
        guard_token = None
    else:
        assert tcp is not None
        if token_file is None:
            raise UsageError("serving on TCP needs a token file")
        sock = bind_tcp(*tcp, allow_remote=allow_remote)
        bound = sock.getsockname()
        listener = Listener(host=tcp[0], port=int(bound[1]))
        guard_token = TokenFile(token_file)

    def started() -> None:
        if temp is not None and path is not None:
            os.replace(temp, path)  # the socket appears: the service answers
        if ready is not None:
            ready(listener)

    # The HTTP side runs on a thread of its own, so requests are answered while a poll of
    # hundreds of VMs keeps the service's loop busy; handlers hand the service's own work
    # to its loop (``api._on_service``) and read the cached listing directly.
    app = Guard(create_app(service, manage=False, on_start=started), token=guard_token)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    failure: list[BaseException] = []

    def run_http() -> None:
        try:
            asyncio.run(server.serve(sockets=[sock]))
        except BaseException as exc:  # handed to the service's loop below
            failure.append(exc)
        finally:
            loop.call_soon_threadsafe(stopped.set)

    # A request needs the GIL a few times; the poll thread would keep it 5 ms at a time.
    sys.setswitchinterval(0.001)
    await service.start()
    thread = threading.Thread(target=run_http, name="balloonctl-serve-http", daemon=True)
    thread.start()
    signals = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopped.set)
            signals.append(sig)
    try:
        await stopped.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        server.should_exit = True
        await asyncio.to_thread(thread.join, 10)
        await service.stop()
        sock.close()
        for leftover in (temp, path):
            if leftover is not None:
                with contextlib.suppress(OSError):
                    if leftover.is_socket() and not listening(leftover):
                        leftover.unlink()
    if failure:
        raise failure[0]
