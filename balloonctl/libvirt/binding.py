"""The libvirt-python binding behind a polite lazy import, libvirt's event loop in one daemon
thread, and one shared connection per URI.

libvirt's calls block, so ``LibvirtClient`` runs them in worker threads (``call``); the
binding is thread-safe. Domain events and connection keepalives need libvirt's event loop:
the default implementation is registered before the first connection is opened and run
by a daemon thread for the rest of the process; callbacks hop onto asyncio with
``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any, Final, TypeVar

from balloonctl.errors import BackendMissing, BalloonError
from balloonctl.libvirt.parse import LibvirtFailure, translate

__all__ = [
    "DEFAULT_URI",
    "INSTALL_HINT",
    "call",
    "failure_of",
    "forget",
    "list_domains",
    "load",
    "on_close",
    "open_connection",
    "qemu_module",
]

T = TypeVar("T")

DEFAULT_URI: Final = "qemu:///system"
INSTALL_HINT: Final = (
    "the libvirt backend needs the libvirt-python binding: pip install 'balloonctl[libvirt]' "
    "(it builds against libvirt's headers: apt-get install libvirt-dev pkg-config gcc "
    "python3-dev)"
)
# A dead daemon is noticed after KEEPALIVE_INTERVAL * (KEEPALIVE_COUNT + 1) seconds at most
# (a daemon that exits closes the socket, which is noticed at once).
KEEPALIVE_INTERVAL: Final = 5
KEEPALIVE_COUNT: Final = 3

_lock = threading.Lock()
_module: ModuleType | None = None
_connections: dict[str, Any] = {}  # uri -> virConnect
_closers: dict[int, list[Callable[[], None]]] = {}  # id(virConnect) -> on-close callbacks


def _run_events(libvirt: ModuleType) -> None:
    while True:
        if libvirt.virEventRunDefaultImpl() < 0:  # pragma: no cover - libvirt's own failure
            return


def load() -> ModuleType:
    """The ``libvirt`` module, its error printer silenced and its event loop running.

    Raises:
        BackendMissing: libvirt-python is not installed (the message says how to get it).
    """
    global _module
    if _module is not None:
        return _module
    with _lock:
        if _module is None:
            try:
                import libvirt
            except ImportError:
                raise BackendMissing(INSTALL_HINT) from None
            # libvirt prints every error on stderr by default; balloonctl reports them once.
            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
            libvirt.virEventRegisterDefaultImpl()
            threading.Thread(target=_run_events, args=(libvirt,), name="libvirt-events",
                             daemon=True).start()
            _module = libvirt
    return _module


def qemu_module() -> ModuleType:
    """``libvirt_qemu`` (for ``qemuAgentCommand``).

    Raises:
        BackendMissing: libvirt-python is not installed.
    """
    load()
    try:
        import libvirt_qemu
    except ImportError:
        raise BackendMissing(INSTALL_HINT) from None
    module: ModuleType = libvirt_qemu
    return module


def failure_of(exc: BaseException, *, op: str, uri: str,
               domain: str | None = None) -> LibvirtFailure | None:
    """A ``libvirtError`` as plain data; None for any other exception."""
    libvirt = load()
    if not isinstance(exc, libvirt.libvirtError):
        return None
    code = exc.get_error_code()
    return LibvirtFailure(code=code if isinstance(code, int) else 0,
                          message=str(exc.get_error_message() or exc), op=op, uri=uri,
                          domain=domain)


def _closed(conn: Any, _reason: int, _opaque: object) -> None:
    # libvirt's event thread: the daemon went away, or the connection was closed.
    with _lock:
        for uri, known in list(_connections.items()):
            if known is conn:
                del _connections[uri]
        callbacks = _closers.pop(id(conn), [])
    for callback in callbacks:
        with contextlib.suppress(Exception):
            callback()


def open_connection(uri: str, *, vm: str | None = None) -> Any:
    """The shared connection to ``uri`` (opened on first use, reopened after it died).
    Blocks: call it from a worker thread.

    Raises:
        LibvirtUnavailable: libvirtd is not running there, or the URI cannot be opened.
        LibvirtDenied: libvirtd refuses this user.
        BackendMissing: libvirt-python is not installed.
    """
    libvirt = load()
    with _lock:
        conn = _connections.get(uri)
    if conn is not None:
        with contextlib.suppress(libvirt.libvirtError):
            if conn.isAlive():
                return conn
        forget(uri, conn)
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        found = failure_of(exc, op="open", uri=uri)
        assert found is not None
        raise translate(found, vm=vm) from None
    with contextlib.suppress(libvirt.libvirtError):  # a remote URI without keepalive support
        conn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
    with contextlib.suppress(libvirt.libvirtError):
        conn.registerCloseCallback(_closed, None)
    with _lock:
        _connections.setdefault(uri, conn)
        return _connections[uri]


def forget(uri: str, conn: Any) -> None:
    """Drop a dead connection from the pool (the next ``open_connection`` reopens)."""
    with _lock:
        if _connections.get(uri) is conn:
            del _connections[uri]


def on_close(conn: Any, callback: Callable[[], None]) -> Callable[[], None]:
    """Call ``callback`` (in libvirt's event thread) when ``conn`` closes; returns a
    function that cancels it."""
    with _lock:
        _closers.setdefault(id(conn), []).append(callback)

    def cancel() -> None:
        with _lock, contextlib.suppress(ValueError, KeyError):
            _closers[id(conn)].remove(callback)

    return cancel


def list_domains(uri: str) -> list[str]:
    """The names of the running domains at ``uri``, sorted. Blocks.

    Raises:
        LibvirtUnavailable, LibvirtDenied, BackendMissing: see ``open_connection``.
    """
    libvirt = load()
    conn = open_connection(uri)
    try:
        domains = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
    except libvirt.libvirtError as exc:
        found = failure_of(exc, op="listAllDomains", uri=uri)
        assert found is not None
        raise translate(found) from None
    return sorted(str(d.name()) for d in domains)


async def call(fn: Callable[[], T], *, op: str, uri: str, domain: str | None,
               vm: str | None, timeout: float) -> T:  # noqa: ASYNC109 - passed through
    """Run the blocking ``fn`` in a worker thread within ``timeout`` seconds, translating
    libvirt's errors (``parse.translate``). A call that times out keeps running in its
    thread; its result is dropped.

    Raises:
        QMPTimeout: no result within ``timeout``.
        and what ``parse.translate`` returns.
    """
    from balloonctl.errors import QMPTimeout

    try:
        async with asyncio.timeout(timeout):
            return await asyncio.to_thread(fn)
    except TimeoutError:
        raise QMPTimeout(f"libvirt did not answer {op} within {timeout:g}s", vm=vm) from None
    except BalloonError:
        raise
    except Exception as exc:
        found = failure_of(exc, op=op, uri=uri, domain=domain)
        if found is None:
            raise
        raise translate(found, vm=vm) from None
