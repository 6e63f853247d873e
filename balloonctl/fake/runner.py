"""Running fakes outside a test's event loop: in a thread, or as a process until a signal."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar

from balloonctl.fake.fleet import FakeFleet
from balloonctl.fake.vm import FakeVM

__all__ = ["SERVED_STATS_INTERVAL", "apply_faults", "run_fleet_forever", "run_in_thread",
           "serve_fleet"]

# A fleet served for people (``balloonctl fake``, ``python -m balloonctl.fake``, ``run_fleet_
# forever``) polls guest stats every 2 s, like Proxmox: fresh stats, not ``stale``. A bare
# FakeVM keeps QEMU's default, polling off.
SERVED_STATS_INTERVAL = 2

F = TypeVar("F", FakeVM, FakeFleet)


@contextlib.contextmanager
def run_in_thread(target: F, *, timeout: float = 10.0) -> Iterator[F]:
    """Run a FakeVM or FakeFleet on its own event loop in a daemon thread.

    For tests of code that calls ``asyncio.run`` itself (the CLI). Yields ``target`` once
    its sockets listen; stops it and joins the thread on exit. Change ``target.guest`` or
    ``target.faults`` from the test through ``vm.call_threadsafe`` when it matters.

    Called from the main thread, SIGHUP and SIGTERM (a closed terminal, ``kill``) that
    would otherwise end the process on the spot raise ``SystemExit`` instead while the fake
    runs, so it stops and the caller's ``finally`` blocks (a temporary directory) run; the
    previous handlers come back on exit. Handlers someone else installed are left alone.

    Raises:
        TimeoutError: the fake did not start (or stop) within ``timeout``.
        OSError: a socket could not be created.
    """
    with _exit_on_hangup():
        with _running(target, timeout=timeout) as running:
            yield running


_EXIT_SIGNALS = tuple(
    s for s in (getattr(signal, "SIGHUP", None), signal.SIGTERM) if s is not None
)


@contextlib.contextmanager
def _exit_on_hangup() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in _EXIT_SIGNALS}

    def leave(signum: int, frame: object) -> None:
        for sig in previous:  # one clean-up: a second signal must not interrupt it
            signal.signal(sig, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    mine = [sig for sig, handler in previous.items() if handler is signal.SIG_DFL]
    for sig in mine:
        signal.signal(sig, leave)
    try:
        yield
    finally:
        for sig in mine:
            signal.signal(sig, previous[sig])


@contextlib.contextmanager
def _running(target: F, *, timeout: float) -> Iterator[F]:
    started = threading.Event()
    errors: list[BaseException] = []
    loop_box: list[asyncio.AbstractEventLoop] = []
    stop_box: list[asyncio.Event] = []

    async def main() -> None:
        stop = asyncio.Event()
        loop_box.append(asyncio.get_running_loop())
        stop_box.append(stop)
        try:
            await target.start()
        except BaseException as exc:
            errors.append(exc)
            started.set()
            return
        started.set()
        try:
            await stop.wait()
        finally:
            await target.stop()

    thread = threading.Thread(
        target=asyncio.run, args=(main(),), name=f"fake-{type(target).__name__}", daemon=True
    )
    thread.start()
    if not started.wait(timeout):
        raise TimeoutError("the fake did not start in time")
    if errors:
        thread.join(timeout)
        raise errors[0]
    try:
        yield target
    finally:
        loop_box[0].call_soon_threadsafe(stop_box[0].set)
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError("the fake did not stop in time")


async def run_fleet_forever(
    n: int,
    ram: int,
    directory: Path,
    workload: str | None = "compile",
    *,
    out: TextIO | None = None,
    stop: asyncio.Event | None = None,
    ready: Callable[[FakeFleet], None] | None = None,
    **vm_kwargs: Any,
) -> None:
    """Serve ``n`` fake VMs in ``directory`` (``serve_fleet``); ``vm_kwargs`` go to
    ``FakeFleet`` (``overrides`` too); the guests' stats polling is on (every
    ``SERVED_STATS_INTERVAL`` s) unless
    ``stats_interval`` says otherwise.

    Raises:
        OSError: a socket could not be created.
        ValueError: an unknown workload, or a bad ``FakeFleet`` argument.
    """
    vm_kwargs.setdefault("stats_interval", SERVED_STATS_INTERVAL)
    fleet = FakeFleet(n, directory, ram=ram, workload=workload, **vm_kwargs)
    await serve_fleet(fleet, out=out, stop=stop, ready=ready)


async def serve_fleet(
    fleet: FakeFleet,
    *,
    out: TextIO | None = None,
    stop: asyncio.Event | None = None,
    ready: Callable[[FakeFleet], None] | None = None,
) -> None:
    """Serve ``fleet`` until SIGINT, SIGTERM or SIGHUP (a closed terminal), or until
    ``stop`` is set; the sockets are removed either way.

    Prints one line per VM when ready: ``NAME qmp=PATH qga=PATH``, then calls ``ready``.

    Raises:
        OSError: a socket could not be created.
    """
    out = sys.stdout if out is None else out
    stop = asyncio.Event() if stop is None else stop
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, *_EXIT_SIGNALS):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        async with fleet:
            for vm in fleet.vms:
                qga = f" qga={vm.qga_path}" if vm.agent else ""
                print(f"{vm.name} qmp={vm.qmp_path}{qga}", file=out, flush=True)
            if ready is not None:
                ready(fleet)
            await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def apply_faults(fleet: FakeFleet, specs: Sequence[str]) -> None:
    """Switch on faults named on a command line: ``FAULT`` for every VM, ``VM=FAULT`` for
    one (see ``Faults.add``).

    Raises:
        ValueError: an unknown fault or VM name.
    """
    by_name = {vm.name: vm for vm in fleet.vms}
    for spec in specs:
        name, eq, fault = spec.partition("=")
        if not eq:
            for vm in fleet.vms:
                vm.faults.add(spec)
        elif name in by_name:
            by_name[name].faults.add(fault)
        else:
            raise ValueError(f"--fault {spec!r}: no VM named {name!r}")

