"""The cache-first hint: reclaim the guest's clean page cache before the balloon inflates,
and an honest account of how (or whether) a VM honours it.

Three modes (``HintMode``), found by probing without changing anything:

- ``device``: a patched balloon device has the ``reclaim-cache-first`` QOM property; the
  device does the work and the property says whether it is on;
- ``agent``: the guest agent runs ``sync; echo 1 > /proc/sys/vm/drop_caches`` before each
  inflation (``QgaClient.drop_caches``); whether it is on is balloonctl's own state
  (``RememberedTargets``), and what each drop released is measured from the guest's stats;
- ``unsupported``: neither, with what would make it work.

``CacheFirst`` is what a ``BalloonClient`` uses for all of it (``hint_status``, ``set_hint``
and the step before an inflation in ``set_target``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Final

from balloonctl.errors import AgentError, AgentExecBlocked, BadAgentReply, HintUnsupported
from balloonctl.model import GuestStats, HintMode, HintState
from balloonctl.qga import QgaClient
from balloonctl.replies import empty, qom_bool
from balloonctl.units import format_size

if TYPE_CHECKING:
    from balloonctl.qmp import BalloonClient
    from balloonctl.targets import RememberedTargets

__all__ = [
    "HINT_PROPERTY",
    "HINT_UNSUPPORTED_MESSAGE",
    "QGA_RECHECK",
    "STATS_POLL_INTERVAL",
    "STATS_REFRESH_WAIT",
    "CacheFirst",
]

log = logging.getLogger(__name__)

HINT_PROPERTY: Final = "reclaim-cache-first"
HINT_UNSUPPORTED_MESSAGE: Final = (
    "stock QEMU has no reclaim-cache-first property; give balloonctl the VM's guest-agent "
    "socket (--qga / qga = ... in config) with guest-exec allowed"
)
# How long the agent-mode hint waits for the guest to push a fresh stats sample, and how
# often it looks (qom-get guest-stats) meanwhile: last-update has whole-second resolution,
# so polling faster than a few times a second only costs round trips.
STATS_REFRESH_WAIT: Final = 3.0
STATS_POLL_INTERVAL: Final = 0.3
# How long a guest-agent probe's answer (guest-exec allowed, or refused) is trusted; an
# unreachable agent is asked again at the next probe.
QGA_RECHECK: Final = 30.0


class CacheFirst:
    """The cache-first hint of ``client``'s VM. The guest agent's answer to the probe is
    kept with the run's other facts (``client.run``, ``RunFacts.qga_checked``); the agent-mode
    choice and the last drop's outcome in ``targets``. ``vm`` is the name errors carry.
    """

    def __init__(self, client: BalloonClient, targets: RememberedTargets, *,
                 vm: str | None) -> None:
        self.client = client
        self.targets = targets
        self.vm = vm

    def _qga(self, *, probe: bool = False) -> QgaClient:
        # A probe (hint status, in every snapshot) must not stall on a guest whose agent is
        # not running: the socket accepts, nothing answers.
        client = self.client
        assert client.qga is not None
        timeout = min(client.command_timeout, 5.0)
        if probe:
            timeout = min(timeout, client.connect_timeout, 2.0)
        if client.session.deadline is not None:  # the operation's overall limit
            timeout = max(0.001, client.session.deadline.bound(timeout)[0])
        return QgaClient(client.qga, timeout=timeout, trace=client.trace,
                         name=f"{client.name}/qga", vm=self.vm)

    async def _qga_refusal(self, *, fresh: bool) -> AgentError | None:
        """Why the guest agent cannot run the cache-first drop (None: it can).

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

    async def probe(self, *, fresh: bool = False) -> tuple[HintState, AgentError | None]:
        """Find how the hint can be honoured here, without changing anything; also return
        the agent failure that makes it unsupported, if that is the reason. The agent's
        answer may be up to ``QGA_RECHECK`` seconds old unless ``fresh``; whether the hint
        is on always comes from the device or the store."""
        client = self.client
        props = await client.device_properties()
        if HINT_PROPERTY in props:  # a patched device; its QOM type is "bool"
            path = await client.device_path()
            enabled = await client.query("qom-get", {"path": path, "property": HINT_PROPERTY},
                                         qom_bool)
            return HintState(HintMode.DEVICE, enabled,
                             f"balloon device property {HINT_PROPERTY}"), None
        if client.qga is None:
            return HintState(HintMode.UNSUPPORTED, False, HINT_UNSUPPORTED_MESSAGE), None
        remembered = await self.targets.remembered()
        refusal = await self._qga_refusal(fresh=fresh)
        if refusal is not None:
            if isinstance(refusal, AgentExecBlocked):
                why = "guest-exec is blocked"
            elif isinstance(refusal, BadAgentReply):
                why = "the guest agent answered nonsense"
            else:
                why = "the guest agent is unreachable"
            detail = f"{why} ({refusal}); {HINT_UNSUPPORTED_MESSAGE}"
            if self.targets.hint_on(remembered):
                detail = f"the hint is on in balloonctl's state but not honoured: {detail}"
            return HintState(HintMode.UNSUPPORTED, False, detail), refusal
        enabled = self.targets.hint_on(remembered)
        released = remembered.get("hint_released")
        detail = "guest agent drops clean page cache before each inflation"
        if remembered.get("hint_error"):
            detail += f"; last drop failed: {remembered['hint_error']}"
        elif isinstance(released, int):
            detail += f"; last drop released {format_size(released)}"
        return HintState(HintMode.AGENT, enabled, detail,
                         released if isinstance(released, int) else None), None

    async def status(self) -> HintState:
        """How the cache-first hint is honoured on this VM (device, agent or unsupported).

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

    async def _next_sample(self, previous: GuestStats, wait: float) -> GuestStats | None:
        """The first stats sample newer than ``previous``, or None after ``wait`` seconds.

        ``last-update`` is whole seconds and the guest pushes at most once per polling
        interval (1 s here), so a changed ``last-update`` is a sample received after
        ``previous`` was read. Looks every ``STATS_POLL_INTERVAL`` seconds (at most
        ``wait / STATS_POLL_INTERVAL`` + 1 ``qom-get`` calls); the last look is at the
        deadline, so this returns within about ``wait`` plus one round trip.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while (left := deadline - loop.time()) > 0:
            await asyncio.sleep(min(STATS_POLL_INTERVAL, left))
            stats = await self.client.stats()
            if stats.last_update != previous.last_update:
                return stats
        return None

    async def _drop_and_measure(self) -> None:
        """Agent-mode hint: have the guest drop clean page cache and measure what it freed.

        The release is ``stat-disk-caches`` in the first sample the guest pushes after this
        starts minus the first one after the drop. The guest pushes stats only on its
        polling interval, so for the measurement the interval is set to 1 s when it is off
        (QEMU then asks for a sample at once) or longer than 2 s, and restored afterwards.

        Added latency per inflation while the hint is on: the two samples, each awaited at
        most ``STATS_REFRESH_WAIT`` (3 s) and looked for every ``STATS_POLL_INTERVAL``
        (0.3 s), plus the guest-exec of the drop (bounded by the agent's timeout, at most
        5 s): typically one to two polling intervals (1-2.5 s), never more than about 6 s
        plus the drop. A release that could not be measured is recorded as unknown (None).
        """
        client = self.client
        interval = await client.polling_interval()
        before = await client.stats()
        if interval == 0 or interval > 2:
            await client.enable_stats(1)
        try:
            # Even with polling on, the latest sample may predate what the guest did since.
            before = await self._next_sample(before, STATS_REFRESH_WAIT) or before
            try:
                async with self._qga() as qga:
                    await qga.drop_caches()
            except AgentError as exc:
                log.warning("%s: cache-first drop failed: %s", client.name, exc)
                client.run.qga_checked = None  # probe the agent afresh next time
                await self.targets.remember(hint_error=str(exc), hint_released=None,
                                     hint_at=time.time())
                return
            after = await self._next_sample(await client.stats(), STATS_REFRESH_WAIT)
        finally:
            if interval == 0 or interval > 2:
                await client.enable_stats(interval)
        released: int | None = None
        if after is not None and before.disk_caches is not None and after.disk_caches is not None:
            released = max(0, before.disk_caches - after.disk_caches)
        await self.targets.remember(hint_released=released, hint_error=None, hint_at=time.time())

    async def before_inflating(self) -> None:
        """``set_target``'s step before an inflation: with the agent-mode hint on, have the
        guest drop clean page cache and record what that released (a failure is recorded,
        not raised).

        Raises:
            NoBalloonDevice, and what ``BalloonClient.execute`` raises.
        """
        if self.client.qga is None or not self.targets.hint_on(await self.targets.remembered()):
            return
        if (await self.status()).mode is HintMode.AGENT:
            await self._drop_and_measure()
