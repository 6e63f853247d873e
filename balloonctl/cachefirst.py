"""The cache-first hint: reclaim the guest's clean page cache for what the balloon takes,
and an honest account of how (or whether) a VM honours it.

Three modes (``HintMode``), found by probing:

- ``device``: a patched balloon device has the ``reclaim-cache-first`` QOM property; the
  device does the work and the property says whether it is on;
- ``agent``: before each inflation the guest agent runs ``balloonctl.reclaim``'s script in
  one guest-exec: it reclaims as much clean page cache as the inflation needs with the root
  cgroup's ``memory.reclaim`` (method ``reclaim``) or, where that is missing, drops the whole
  clean page cache (method ``drop``), and reads ``/proc/meminfo`` before and after, so the
  release is known without waiting for a balloon stats sample. Whether the hint is on, the
  method and the last outcome are balloonctl's own state (``RememberedTargets``);
- ``unsupported``: neither, with what would make it work.

``CacheFirst`` is what a ``BalloonClient`` uses for all of it (``hint_status``, ``set_hint``
and the step before an inflation in ``set_target``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from balloonctl.errors import AgentError, AgentExecBlocked, BadAgentReply, HintUnsupported
from balloonctl.model import HintMethod, HintMode, HintState
from balloonctl.qga import ExecResult, QgaClient
from balloonctl.reclaim import ReclaimReport, explain, parse_reclaim_output, reclaim_argv
from balloonctl.replies import empty, qom_bool
from balloonctl.units import format_size

if TYPE_CHECKING:
    from balloonctl.targets import RememberedTargets

__all__ = [
    "HINT_BUDGET",
    "HINT_PROPERTY",
    "HINT_UNSUPPORTED_MESSAGE",
    "QGA_RECHECK",
    "CacheFirst",
    "HintClient",
]

log = logging.getLogger(__name__)

HINT_PROPERTY: Final = "reclaim-cache-first"
HINT_UNSUPPORTED_MESSAGE: Final = (
    "stock QEMU has no reclaim-cache-first property; give balloonctl the VM's guest-agent "
    "socket (--qga / qga = ... in config) with guest-exec allowed"
)
# The most the agent-mode step may add to an inflation (guest-agent probe, connect and the
# reclaim script), and never more than half the client's command timeout: a slow or broken
# guest agent delays the balloon command by at most this much, then the inflation goes on.
HINT_BUDGET: Final = 5.0
# How long a guest-agent probe's answer (guest-exec allowed, or refused) is trusted; an
# unreachable agent is asked again at the next probe.
QGA_RECHECK: Final = 30.0


def _describe(method: HintMethod | None, why: str, remembered: dict[str, Any]) -> str:
    """hint status's words for agent mode: the method, why, and the last outcome."""
    if method is HintMethod.RECLAIM:
        text = "the guest agent reclaims as much clean page cache as each inflation needs"
    elif method is HintMethod.DROP:
        text = "the guest agent drops the whole clean page cache before each inflation"
    else:
        text = "the guest agent reclaims clean page cache before each inflation"
    text += f" ({why})" if why else ""
    if remembered.get("hint_mounted"):
        text += "; balloonctl mounted cgroup2 at /sys/fs/cgroup (hint_mount_cgroup)"
    released = remembered.get("hint_released")
    verb = "drop" if method is HintMethod.DROP else "reclaim"
    if remembered.get("hint_error"):
        text += f"; last {verb} failed: {remembered['hint_error']}"
    elif isinstance(released, int):
        text += f"; last {verb} released {format_size(released)}"
        if remembered.get("hint_result") == "short":
            text += " (less than asked: no more clean page cache to reclaim)"
    return text


class QgaFacts(Protocol):
    """The guest agent's last answer to the probe, kept with the run's facts."""

    qga_checked: float | None
    qga_error: AgentExecBlocked | None


_T = TypeVar("_T")


class HintClient(Protocol):
    """What ``CacheFirst`` needs of a VM's client: ``BalloonClient`` (the guest agent by its
    socket, the device's QOM over QMP) and ``LibvirtClient`` (the guest agent through
    libvirt, no QOM: never device mode) fit. ``qga`` says where the guest agent is (None:
    nowhere) and ``qga_client`` makes a client for it."""

    @property
    def name(self) -> str: ...

    @property
    def qga(self) -> str | None: ...

    @property
    def run(self) -> QgaFacts: ...

    @property
    def connect_timeout(self) -> float: ...

    @property
    def command_timeout(self) -> float: ...

    @property
    def hint_mount_cgroup(self) -> bool: ...

    def qga_client(self, *, timeout: float) -> QgaClient: ...

    async def device_properties(self) -> Mapping[str, str]: ...

    async def device_path(self) -> str: ...

    async def query(self, cmd: str, args: dict[str, Any] | None,
                    parse: Callable[[Any], _T]) -> _T: ...


class CacheFirst:
    """The cache-first hint of ``client``'s VM. The guest agent's answer to the probe is
    kept with the run's other facts (``client.run``, ``RunFacts.qga_checked``); the agent-mode
    choice, its method and the last reclaim's outcome in ``targets``. ``vm`` is the name
    errors carry. ``client.hint_mount_cgroup`` allows mounting cgroup2 in the guest (only
    while the hint is on).
    """

    def __init__(self, client: HintClient, targets: RememberedTargets, *,
                 vm: str | None, unsupported: str = HINT_UNSUPPORTED_MESSAGE) -> None:
        self.client = client
        self.targets = targets
        self.vm = vm
        self.unsupported = unsupported  # what would make the hint work, when nothing does

    def _qga(self, *, probe: bool = False) -> QgaClient:
        # A probe (hint status, in every snapshot) must not stall on a guest whose agent is
        # not running: the socket accepts, nothing answers.
        client = self.client
        assert client.qga is not None
        timeout = min(client.command_timeout, 5.0)
        if probe:
            timeout = min(timeout, client.connect_timeout, 2.0)
        session = getattr(client, "session", None)  # a QMP client: the overall limit
        if session is not None and session.deadline is not None:
            timeout = max(0.001, session.deadline.bound(timeout)[0])
        return client.qga_client(timeout=timeout)

    def budget(self) -> float:
        """Seconds the agent-mode step may add to an inflation (``HINT_BUDGET``, at most
        half the command timeout)."""
        return min(HINT_BUDGET, self.client.command_timeout / 2)

    async def _qga_refusal(self, *, fresh: bool) -> AgentError | None:
        """Why the guest agent cannot run the cache-first reclaim (None: it can).

        An answer (guest-exec allowed or refused) is reused for ``QGA_RECHECK`` seconds
        unless ``fresh``; an unreachable agent is asked again next time.
        """
        run = self.client.run
        now = time.monotonic()
        if (not fresh and run.qga_checked is not None
                and now - run.qga_checked < QGA_RECHECK):
            return run.qga_error
        run.qga_checked = None
        try:
            async with self._qga(probe=True) as qga:
                await qga.require_exec()
        except AgentExecBlocked as exc:
            run.qga_checked, run.qga_error = now, exc
            return exc
        except AgentError as exc:
            return exc
        run.qga_checked, run.qga_error = now, None
        return None

    async def _run_script(self, n: int, *, mount: bool, probe: bool = False) -> ReclaimReport:
        """Run the reclaim script in the guest (one guest-exec): reclaim ``n`` bytes, or with
        ``n == 0`` only find the method.

        Raises:
            AgentExecBlocked, AgentError: the agent failed, the script exited non-zero or
                printed something of the wrong shape.
        """
        async with self._qga(probe=probe) as qga:
            wait = min(self.budget(), qga.timeout) if probe else self.budget()
            result = await qga.exec("/bin/sh", reclaim_argv(n, mount_cgroup=mount),
                                    timeout=wait)
        return self._parse(result)

    def _may_mount(self, enabled: bool) -> bool:
        return enabled and self.client.hint_mount_cgroup

    async def _remember_report(self, report: ReclaimReport, *, mount: bool,
                               measured: bool, remembered: dict[str, Any]) -> None:
        values: dict[str, Any] = {
            "hint_method": report.method.value, "hint_why": report.why,
            "hint_probe_mount": mount,
            "hint_mounted": bool(report.mounted or remembered.get("hint_mounted")),
        }
        if measured:
            values.update(hint_released=report.released, hint_at=time.time(),
                          hint_result=report.result,
                          hint_error="drop_caches refused the write"
                          if report.result == "failed" else None)
        try:
            await self.targets.remember(**values)
        except OSError as exc:  # a read-only state directory: the guest's work still counts
            log.warning("%s: cannot record the cache-first outcome: %s", self.client.name, exc)

    async def _method(self, state: HintState, remembered: dict[str, Any]) -> HintState:
        """Agent mode's state with its method and why: from the store when it was found
        with the same mount permission on this run, else probed (a guest-exec of the
        script with nothing to reclaim; it mounts cgroup2 only while the hint is on and
        ``hint_mount_cgroup`` allows it)."""
        mount = self._may_mount(state.enabled)
        if remembered.get("hint_method") is None or remembered.get("hint_probe_mount") != mount:
            try:
                report = await self._run_script(0, mount=mount, probe=True)
            except AgentError as exc:
                why = f"reclaim method not known: {exc}"
                return replace(state, detail=_describe(None, why, remembered))
            await self._remember_report(report, mount=mount, measured=False,
                                        remembered=remembered)
            remembered = {**remembered, "hint_method": report.method.value,
                          "hint_why": report.why,
                          "hint_mounted": report.mounted or remembered.get("hint_mounted")}
        try:
            method = HintMethod(remembered["hint_method"])
        except ValueError:  # a store written by something else
            return replace(state, detail=_describe(None, "", remembered))
        why = explain(method, str(remembered.get("hint_why", "")))
        return replace(state, method=method, detail=_describe(method, why, remembered))

    async def _mode(self, *, fresh: bool,
                    ) -> tuple[HintState, AgentError | None, dict[str, Any]]:
        """The mode, whether the hint is on, and the run's store entry (agent mode's
        method is not looked at here)."""
        client = self.client
        props = await client.device_properties()
        if HINT_PROPERTY in props:  # a patched device; its QOM type is "bool"
            path = await client.device_path()
            enabled = await client.query("qom-get", {"path": path, "property": HINT_PROPERTY},
                                         qom_bool)
            return HintState(HintMode.DEVICE, enabled,
                             f"balloon device property {HINT_PROPERTY}"), None, {}
        if client.qga is None:
            return HintState(HintMode.UNSUPPORTED, False, self.unsupported), None, {}
        remembered = await self.targets.remembered()
        refusal = await self._qga_refusal(fresh=fresh)
        if refusal is not None:
            if isinstance(refusal, AgentExecBlocked):
                why = "guest-exec is blocked"
            elif isinstance(refusal, BadAgentReply):
                why = "the guest agent answered nonsense"
            else:
                why = "the guest agent is unreachable"
            detail = f"{why} ({refusal}); {self.unsupported}"
            if self.targets.hint_on(remembered):
                detail = f"the hint is on in balloonctl's state but not honoured: {detail}"
            return HintState(HintMode.UNSUPPORTED, False, detail), refusal, remembered
        released = remembered.get("hint_released")
        return HintState(HintMode.AGENT, self.targets.hint_on(remembered), "",
                         released if isinstance(released, int) else None), None, remembered

    async def probe(self, *, fresh: bool = False) -> tuple[HintState, AgentError | None]:
        """Find how the hint can be honoured here; also return the agent failure that makes
        it unsupported, if that is the reason. The agent's answer may be up to
        ``QGA_RECHECK`` seconds old unless ``fresh``; whether the hint is on always comes
        from the device or the store. Agent mode's method is found once per run of the VM
        (and again when the hint is turned on or off with ``hint_mount_cgroup`` set), then
        kept up to date by each inflation's reclaim."""
        state, refusal, remembered = await self._mode(fresh=fresh)
        if state.mode is HintMode.AGENT:
            state = await self._method(state, remembered)
        return state, refusal

    async def status(self) -> HintState:
        """How the cache-first hint is honoured on this VM (device, agent or unsupported),
        and in agent mode by which method (``reclaim`` or ``drop``) and why.

        Whether the guest agent allows guest-exec is probed at most every ``QGA_RECHECK``
        seconds for this run of the VM (every time while the agent is unreachable).

        Raises:
            NoBalloonDevice, and what ``execute`` raises.
        """
        state, _ = await self.probe()
        return state

    async def set(self, on: bool) -> HintState:
        """Turn the cache-first hint on or off and return the resulting state.

        Device mode sets the device's ``reclaim-cache-first`` property; agent mode records
        the choice in the store (it applies to later inflations, from any balloonctl run,
        until the VM restarts).

        Raises:
            HintUnsupported: ``on`` and no way to honour it (the message says what would).
            AgentExecBlocked: the guest agent refuses guest-exec.
            NoBalloonDevice, and what ``execute`` raises.
        """
        state, agent_error = await self.probe(fresh=True)
        if state.mode is HintMode.DEVICE:
            path = await self.client.device_path()
            await self.client.query("qom-set", {"path": path, "property": HINT_PROPERTY,
                                                 "value": bool(on)}, empty)
            return await self.status()
        if state.mode is HintMode.UNSUPPORTED:
            if on:
                if isinstance(agent_error, AgentExecBlocked):
                    raise agent_error
                raise HintUnsupported(f"cannot honour the cache-first hint: {state.detail}",
                                      vm=self.vm)
            await self.targets.remember(hint=False)
            return state
        await self.targets.remember(hint=bool(on))
        return await self.status()

    @contextlib.asynccontextmanager
    async def reclaiming(self, n: int) -> AsyncIterator[None]:
        """``set_target`` sends an inflation of ``n`` bytes inside this. With the agent-mode
        hint on, the guest is asked to reclaim that much clean page cache (the reclaim
        script, one guest-exec: see ``balloonctl.reclaim``) before the body runs: the body
        (the balloon command) waits only until the request is written (with the guest-agent
        handshake, in one write), not for the agent's answer, and the script runs alongside
        the balloon, as the RFC's per-page reclaim does. On the way out its report is read
        and the method and what was released are recorded.

        Everything the guest agent does here fits in ``budget()`` seconds, before and after
        the body together: a slow or broken agent delays the balloon command by at most
        that (only when the socket itself does not take the request), and its failure is
        recorded in the hint state, never raised.

        Raises:
            NoBalloonDevice, and what ``BalloonClient.execute`` raises (QMP only, on the
            way in; the body's own errors pass through).
        """
        client = self.client
        if client.qga is None or n <= 0:
            yield
            return
        remembered = await self.targets.remembered()
        if (not self.targets.hint_on(remembered)
                or HINT_PROPERTY in await client.device_properties()):
            yield  # hint off, or device mode: the device reclaims for each page itself
            return
        mount = self._may_mount(True)
        budget = self.budget()
        deadline = asyncio.get_running_loop().time() + budget
        qga = self._qga()
        error: AgentError | None = None
        report: ReclaimReport | None = None
        written = asyncio.Event()
        # The balloon goes out once the guest-exec request is written, not once the agent
        # answers: qemu-ga on virtio-serial sleeps 100 ms whenever its channel reads empty
        # (as right after a host-side close or connect), and the inflation need not wait
        # for that; the script starts in the guest as the agent reads it, alongside.
        start = asyncio.create_task(qga.exec_start(
            "/bin/sh", reclaim_argv(n, mount_cgroup=mount), sent=written.set))
        try:
            sending = asyncio.create_task(written.wait())
            try:
                # connecting took the whole budget: start's outcome below says so
                await asyncio.wait([start, sending], return_when=asyncio.FIRST_COMPLETED,
                                   timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
            finally:
                sending.cancel()
            yield
            try:
                async with asyncio.timeout_at(deadline):
                    pid = await start
                    report = self._parse(await qga.exec_wait(pid))
            except TimeoutError:
                error = self._too_slow(budget)
            except AgentError as exc:
                error = exc
        finally:
            if not start.done():
                start.cancel()
                await asyncio.wait([start])
            await qga.close()
        if report is not None:
            await self._remember_report(report, mount=mount, measured=True,
                                        remembered=remembered)
            return
        assert error is not None
        if isinstance(error, AgentExecBlocked):
            client.run.qga_checked, client.run.qga_error = time.monotonic(), error
        else:
            client.run.qga_checked = None  # probe the agent afresh next time
        log.warning("%s: cache-first reclaim failed: %s", client.name, error)
        try:
            await self.targets.remember(hint_error=str(error), hint_released=None,
                                        hint_at=time.time())
        except OSError as exc:
            log.warning("%s: cannot record the cache-first outcome: %s", client.name, exc)

    def _too_slow(self, budget: float) -> AgentError:
        return AgentError(f"the guest agent did not finish reclaiming page cache within "
                          f"{budget:g}s; the inflation went ahead", vm=self.vm)

    def _parse(self, result: ExecResult) -> ReclaimReport:
        """Raises: AgentError: non-zero exit, or output of the wrong shape."""
        if result.exitcode != 0:
            err = result.stderr.decode(errors="replace").strip()[:200]
            raise AgentError(f"the guest's cache-reclaim script exited {result.exitcode}"
                             + (f": {err}" if err else ""), vm=self.vm)
        return parse_reclaim_output(result.stdout, vm=self.vm)
