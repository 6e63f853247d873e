"""One run of a VM (one QEMU process) as a client sees it: its identity, and the facts that
stay fixed while it lasts, kept across reconnects and handed from one client to the next.

``KnownRun`` is the live record a ``BalloonClient`` keeps; ``RunFacts`` its frozen copy
(``BalloonClient.run_facts()``, ``BalloonClient(facts=...)``; ``Fleet``'s polite mode
passes them from one connection to the next).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from balloonctl.errors import AgentExecBlocked, QMPCommandError
from balloonctl.model import DeviceFeatures
from balloonctl.qmpsession import QmpSession
from balloonctl.replies import parse_qmp, vcpu0_thread

__all__ = ["RUN_RECHECK", "KnownRun", "RunFacts"]

# How long a run's vCPU thread id, once read over QMP, is trusted on later connections that
# find the same socket file (RunFacts): the file alone already names the run; re-reading
# the thread id now and then covers a file system that reuses an inode within its
# timestamp granularity.
RUN_RECHECK: Final = 60.0
_UNKNOWN_THREAD: Final = "vcpu0-thread:unknown"


@dataclass(frozen=True, slots=True)
class RunFacts:
    """What a client learned about one run of a VM that stays fixed while it runs, so that
    a later connection to the same run can skip asking (``BalloonClient(facts=...)``,
    ``BalloonClient.run_facts()``; ``Fleet``'s polite mode hands them from one connection
    to the next).

    ``socket`` and ``run`` name the run as ``instance_id`` does: the unix socket file's
    identity (None over TCP) and vCPU 0's host thread; ``run_checked`` is the
    ``time.monotonic()`` at which ``run`` was last read over QMP. ``None`` fields were not
    learned. ``qga_checked`` is when the guest agent was last probed for guest-exec (the
    cache-first hint) and ``qga_error`` its refusal (None: guest-exec allowed).

    A command failing with DeviceNotFound or DeviceNotActive forgets the device's facts. A
    balloon device unplugged and plugged again under the same id between two connections
    goes unnoticed: its features are the first device's until the VM restarts.
    """

    socket: str | None
    run: str
    run_checked: float
    device: str | None = None
    properties: Mapping[str, str] | None = None
    guest_ram: int | None = None
    features: DeviceFeatures | None = None
    qga_checked: float | None = None
    qga_error: AgentExecBlocked | None = None


class KnownRun:
    """The run behind ``session``'s connection and its fixed facts, as far as known.

    The fact fields (``device``, ``properties``, ``guest_ram``, ``features``, ``qga_checked``,
    ``qga_error``) are filled by whoever reads them over QMP or the guest agent; None is
    not known yet. A new connection forgets them all (``connected``) and takes back those of
    ``earlier`` (a ``RunFacts``) once the connection shows the same run.
    """

    def __init__(self, session: QmpSession, earlier: RunFacts | None = None) -> None:
        self.session = session
        self.device: str | None = None
        self.properties: dict[str, str] | None = None
        self.guest_ram: int | None = None
        self.features: DeviceFeatures | None = None
        self.qga_checked: float | None = None
        self.qga_error: AgentExecBlocked | None = None
        self._run_id: str | None = None  # vCPU 0's thread: the run behind this connection
        self._socket_id: str | None = None  # the socket file when _run_id was learned
        self._run_checked = 0.0  # time.monotonic() when _run_id was read over QMP
        # Facts of an earlier connection, used once this one shows it reaches the same run.
        self._earlier = earlier

    def connected(self) -> None:
        """A new connection: forget this run's facts until it shows the same run."""
        # A reconnect may reach a different QEMU process behind the same socket path: what
        # the last connection learned is used again only once this one shows the same run.
        self._earlier = self.facts() or self._earlier
        self.forget_device()
        self.guest_ram = None
        self._run_id = None
        self._socket_id = None
        self.qga_checked = None
        self.qga_error = None
        self._recall(checked=False)

    def forget_device(self) -> None:
        # The balloon device may have been unplugged (and another one plugged) at runtime.
        self.device = None
        self.properties = None
        self.features = None

    def facts(self) -> RunFacts | None:
        """The known facts, frozen; None before the run's identity was read."""
        if self._run_id is None:
            return None
        return RunFacts(
            socket=self._socket_id, run=self._run_id, run_checked=self._run_checked,
            device=self.device,
            properties=None if self.properties is None else dict(self.properties),
            guest_ram=self.guest_ram, features=self.features,
            qga_checked=self.qga_checked, qga_error=self.qga_error)

    def _recall(self, *, checked: bool, run: str | None = None) -> None:
        """Take over the earlier connection's facts if they are of the run this one reaches.

        ``checked=False`` (just connected, no I/O): a unix socket file that is still the one
        the facts were learned on names the same run, while the facts' thread id is younger
        than ``RUN_RECHECK``; otherwise the facts wait for ``instance_id`` to read the
        thread id, which calls this with ``checked=True`` and that ``run``.
        """
        earlier = self._earlier
        if earlier is None:
            return
        socket_id = self.session.socket_id
        if socket_id != earlier.socket:
            self._earlier = None  # the socket file was re-created: QEMU restarted
            return
        if checked:
            self._earlier = None
            if run != earlier.run or (socket_id is None and run == _UNKNOWN_THREAD):
                return  # another run (over TCP an unknown thread tells nothing)
            run_checked = time.monotonic()
        else:
            if socket_id is None or time.monotonic() - earlier.run_checked >= RUN_RECHECK:
                return
            self._earlier = None
            run_checked = earlier.run_checked
        self._run_id, self._socket_id, self._run_checked = earlier.run, socket_id, run_checked
        if self.device is None:
            self.device = earlier.device
        if self.properties is None and earlier.properties is not None:
            self.properties = dict(earlier.properties)
        if self.guest_ram is None:
            self.guest_ram = earlier.guest_ram
        if self.features is None:
            self.features = earlier.features
        if self.qga_checked is None:
            self.qga_checked, self.qga_error = earlier.qga_checked, earlier.qga_error

    async def instance_id(self) -> str | None:
        """See ``BalloonClient.instance_id``.

        Raises:
            BadReply: query-cpus-fast's reply has the wrong shape.
            (and what ``QmpSession.execute`` raises; it connects when needed)
        """
        if not self.session.connected:
            await self.session.connect()  # recalls the run when the socket file is the one seen
        if self._run_id is None:
            run = await self._vcpu_thread_identity()
            self._recall(checked=True, run=run)
            if self._run_id is None:
                self._run_id, self._socket_id = run, self.session.socket_id
                self._run_checked = time.monotonic()
        return self.known_instance_id()

    async def _vcpu_thread_identity(self) -> str:
        try:
            reply = await self.session.execute("query-cpus-fast")
        except QMPCommandError:
            return _UNKNOWN_THREAD
        thread = parse_qmp(vcpu0_thread, reply, cmd="query-cpus-fast", vm=self.session.vm)
        return _UNKNOWN_THREAD if thread is None else f"vcpu0-thread:{thread}"

    def known_instance_id(self) -> str | None:
        """``instance_id`` without I/O: None when not connected, before a call on this
        connection has read it, or when the unix socket was gone."""
        if self._run_id is None or not self.session.connected:
            return None
        if isinstance(self.session.addr, str):
            # The file as this connection found it: QEMU cannot have restarted behind a
            # connection that is still up.
            socket_id = self.session.socket_id
            return None if socket_id is None else f"{socket_id} {self._run_id}"
        return f"tcp {self._run_id}"
