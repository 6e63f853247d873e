"""The experiments on real VMs, in real time: the caller's ``BalloonClient``s, the host's
own memory files, and (with a workload) a command run in each guest through qga and timed
there, as the RFC timed kernbench.

Each run starts alike: the balloon back at the target it had before the experiment, and,
when the VM has qga, the guest's clean page cache dropped (``echo 3 > drop_caches``), so
the second run does not start with the first run's cache. After each run the balloon goes
back to that target; after the experiment the hint is set back as it was.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from balloonctl.errors import AgentError, BalloonError, HintUnsupported, UsageError
from balloonctl.experiment.runs import Bench, RealClock
from balloonctl.host import HostMemory, read_host
from balloonctl.model import HintMode
from balloonctl.qga import QgaClient

if TYPE_CHECKING:
    from balloonctl.qmp import BalloonClient

__all__ = ["RESET_WAIT", "WORKLOAD_POLL", "RealBench", "parse_elapsed", "real_benches",
           "workload_script"]

log = logging.getLogger(__name__)

# How often the workload's process is asked whether it has exited (seconds).
WORKLOAD_POLL: Final = 0.5
# How long the balloon may take to get back to its original target between runs.
RESET_WAIT: Final = 120.0
_MARK: Final = "balloonctl-elapsed"
_ELAPSED_RE = re.compile(rf"^{_MARK} ([0-9]{{1,12}}(?:\.[0-9]{{1,6}})?) "
                         r"([0-9]{1,12}(?:\.[0-9]{1,6})?)$")
_COLD_CACHE: Final = "sync; echo 3 > /proc/sys/vm/drop_caches"


def workload_script() -> str:
    """The guest shell script that runs a workload (its first argument) and times it with
    the guest's own clock (``/proc/uptime``, hundredths of a second), printing the start
    and end on the last line of stderr; the workload's stdout is discarded (qga buffers
    output, a compile prints a lot)."""
    return (f'read s _ </proc/uptime; /bin/sh -c "$1" >/dev/null; rc=$?; '
            f'read e _ </proc/uptime; echo "{_MARK} $s $e" >&2; exit $rc')


def parse_elapsed(stderr: bytes) -> float | None:
    """The guest-measured run time from ``workload_script``'s last stderr line (None: the
    line is missing or malformed: a guest can print anything)."""
    lines = stderr.decode("ascii", errors="replace").strip().splitlines()
    if not lines:
        return None
    m = _ELAPSED_RE.match(lines[-1].strip())
    if m is None:
        return None
    elapsed = float(m.group(2)) - float(m.group(1))
    return elapsed if elapsed >= 0 else None


def _exec_status(reply: Any, vm: str) -> tuple[bool, int, bytes]:
    """(exited, exit code, stderr) of a ``guest-exec-status`` reply, checked.

    Raises:
        AgentError: the reply has the wrong shape.
    """
    if not isinstance(reply, dict) or not isinstance(reply.get("exited"), bool):
        raise AgentError(f"guest-exec-status: unexpected reply {str(reply)[:80]!r}", vm=vm)
    if not reply["exited"]:
        return False, 0, b""
    code = reply.get("exitcode")
    err = reply.get("err-data", "")
    try:
        stderr = base64.b64decode(err if isinstance(err, str) else "", validate=True)
    except ValueError:
        stderr = b""
    return True, code if isinstance(code, int) and not isinstance(code, bool) else -1, stderr


class RealBench:
    """Real VMs for one run (see the module docstring)."""

    def __init__(self, clients: Mapping[str, BalloonClient], *, workload: str | None,
                 host_root: Path, clock: RealClock | None = None) -> None:
        self.clients = clients
        self.workload = workload
        self.host_root = host_root
        self.clock = clock or RealClock()
        self._tasks: dict[str, asyncio.Task[float]] = {}

    def read_host(self) -> HostMemory | None:
        """Raises: HostReadError: the host's memory files are unreadable."""
        return read_host(self.host_root)

    def _qga(self, c: BalloonClient) -> QgaClient:
        assert c.qga is not None
        return QgaClient(c.qga, timeout=min(c.command_timeout, 10.0), trace=c.trace,
                         name=f"{c.name}/qga", vm=c.name)

    async def _run_workload(self, c: BalloonClient, command: str) -> float:
        """Start ``command`` in the guest and wait for it; its run time (guest-measured,
        else measured here to within ``WORKLOAD_POLL``). Each request is a connection of
        its own: the hint's reclaim needs qga too meanwhile.

        Raises:
            AgentError: qga failed, or the workload exited non-zero.
        """
        async with self._qga(c) as qga:
            started = await qga.execute("guest-exec", {
                "path": "/bin/sh", "arg": ["-c", workload_script(), "balloonctl", command],
                "capture-output": True})
        pid = started.get("pid") if isinstance(started, dict) else None
        if not isinstance(pid, int) or isinstance(pid, bool):
            raise AgentError(f"guest-exec: unexpected reply {str(started)[:80]!r}", vm=c.name)
        t0 = self.clock.now()
        while True:
            await asyncio.sleep(WORKLOAD_POLL)
            try:
                async with self._qga(c) as qga:
                    reply = await qga.execute("guest-exec-status", {"pid": pid})
            except AgentError as exc:  # busy (the hint's reclaim) or slow: ask again
                log.debug("%s: workload status: %s", c.name, exc)
                continue
            exited, code, stderr = _exec_status(reply, c.name)
            if not exited:
                continue
            took = self.clock.now() - t0
            if code != 0:
                tail = stderr.decode(errors="replace").strip().splitlines()
                why = tail[-2] if len(tail) > 1 else f"exit {code}"
                raise AgentError(f"the workload failed (exit {code}): {why[:200]}", vm=c.name)
            return parse_elapsed(stderr) or took

    async def start_workloads(self) -> None:
        """Raises: UsageError: a workload was given and a VM has no qga socket."""
        if self.workload is None:
            return
        for name, c in self.clients.items():
            if c.qga is None:
                raise UsageError(f"{name}: --workload runs through the guest agent: give the "
                                 "VM's qga socket (--qga, or qga = ... in the config)")
        for name, c in self.clients.items():
            self._tasks[name] = asyncio.get_running_loop().create_task(
                self._run_workload(c, self.workload))

    def finished(self) -> bool:
        return bool(self._tasks) and all(t.done() for t in self._tasks.values())

    async def stop_workloads(self) -> dict[str, float | None]:
        """Raises: AgentError: a workload failed."""
        times: dict[str, float | None] = dict.fromkeys(self.clients)
        for name, task in self._tasks.items():
            if not task.done():
                log.warning("%s: the workload had not finished when the run ended; it goes on "
                            "in the guest", name)
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                times[name] = await task
        self._tasks.clear()
        return times

    async def reset(self, targets: Mapping[str, int]) -> None:
        """Put every balloon back at its target, wait for it, and drop the guest's clean
        page cache (when the VM has qga) so that every run starts cold.

        Raises:
            BalloonError: a target could not be set or reached.
        """
        async def one(name: str, c: BalloonClient) -> None:
            await c.set_target(targets[name], force=True)
            await c.wait_for_target(targets[name], timeout=RESET_WAIT)
            if c.qga is not None:
                try:
                    async with self._qga(c) as qga:
                        await qga.exec("/bin/sh", ["-c", _COLD_CACHE], timeout=60.0)
                except AgentError as exc:
                    log.warning("%s: could not drop the page cache before the run: %s",
                                name, exc)

        await asyncio.gather(*(one(n, c) for n, c in self.clients.items()))


def real_benches(
    clients: Mapping[str, BalloonClient], *, workload: str | None, host_root: Path,
) -> tuple[Callable[[], AbstractAsyncContextManager[Bench]], Callable[[], Any]]:
    """A bench for each run over the same VMs, and a coroutine function that puts the hint
    back as it was (call it when the experiment ends, however it ends)."""
    original: dict[str, int] = {}
    hints: dict[str, bool] = {}

    @contextlib.asynccontextmanager
    async def bench() -> AsyncIterator[Bench]:
        if not original:
            for name, c in clients.items():
                original[name] = await c.current_target() or await c.query_actual()
                state = await c.hint_status()
                if state.mode is not HintMode.UNSUPPORTED:
                    hints[name] = state.enabled
        b = RealBench(clients, workload=workload, host_root=host_root)
        await b.reset(original)
        try:
            yield b
        finally:
            async def back(name: str, c: BalloonClient) -> None:
                with contextlib.suppress(BalloonError):
                    await c.set_target(original[name], force=True)
                    await c.wait_for_target(original[name], timeout=RESET_WAIT)

            await asyncio.gather(*(back(n, c) for n, c in clients.items()))

    async def restore_hints() -> None:
        for name, on in hints.items():
            with contextlib.suppress(BalloonError, HintUnsupported):
                await clients[name].set_hint(on)

    return bench, restore_hints
