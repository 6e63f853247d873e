"""The guest agent of a libvirt domain, reached through libvirt's API."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from balloonctl.errors import (
    AgentError,
    AgentExecBlocked,
    BadAgentReply,
    BalloonError,
    DomainNotRunning,
    LibvirtUnavailable,
)
from balloonctl.libvirt import binding
from balloonctl.qga import QgaClient
from balloonctl.replies import ErrorReply, envelope, parse_qga

if TYPE_CHECKING:
    from balloonctl.libvirt.client import LibvirtClient

__all__ = ["LibvirtQga"]


class LibvirtQga(QgaClient):
    """The guest agent of a libvirt domain, reached through ``virDomainQemuAgentCommand``
    (libvirt owns the channel's socket and does the ``guest-sync`` itself). Everything
    above ``execute`` (``require_exec``, ``exec``, ``drop_caches``) is ``QgaClient``'s.
    """

    def __init__(self, client: LibvirtClient, *, timeout: float) -> None:
        super().__init__(f"{client.address} (libvirt)", timeout=timeout, trace=client.trace,
                         name=f"{client.name}/qga", vm=client.vm)
        self.client = client

    @property
    def connected(self) -> bool:
        return True

    async def connect(self) -> None:
        await self.client.connect()

    async def close(self) -> None:
        return None

    async def sync(self) -> None:
        return None

    async def execute(self, cmd: str, args: dict[str, Any] | None = None, *,
                      sent: Callable[[], None] | None = None) -> Any:
        """Run one agent command through libvirt; its ``return`` value, unparsed (``query``
        parses it with the same ``balloonctl.replies`` parsers as on a qga socket).
        ``sent()`` is called as the command is handed to libvirt.

        Raises:
            AgentError: libvirt or the agent failed (AgentExecBlocked for a refused
                guest-exec; BadAgentReply for a reply that is not JSON or of the wrong shape).
        """
        msg: dict[str, Any] = {"execute": cmd}
        if args is not None:
            msg["arguments"] = args
        if self.trace is not None:
            self.trace(self.name, "->", msg)
        qemu = binding.qemu_module()
        await self.client.connect()
        dom = self.client.domain_object()
        wait = max(1, math.ceil(self.timeout))
        if sent is not None:
            sent()
        try:
            text = await self.client.blocking(
                lambda: qemu.qemuAgentCommand(dom, json.dumps(msg), wait, 0),
                op="qemuAgentCommand", timeout=self.timeout + 1)
        except (DomainNotRunning, LibvirtUnavailable):
            raise
        except BalloonError as exc:
            text = exc.message.lower()
            if cmd.startswith("guest-exec") and ("disabled" in text or "not found" in text):
                raise AgentExecBlocked(
                    f"the guest agent refuses {cmd} ({exc.message}): allow it in the guest's "
                    "qemu-ga configuration", vm=self.vm) from None
            if isinstance(exc, AgentError):
                raise
            raise AgentError(f"guest agent {cmd} failed: {exc.message}", vm=self.vm) from None
        try:
            reply = json.loads(text)
        except (TypeError, ValueError):
            raise BadAgentReply(f"the guest agent at {self.path} sent a bad reply to {cmd}: "
                                f"not JSON: {text!r}", vm=self.vm, sent=msg,
                                received=text) from None
        if self.trace is not None:
            self.trace(self.name, "<-", reply)
        result = parse_qga(envelope, reply, cmd=cmd, args=args, vm=self.vm, path=self.path)
        if isinstance(result, ErrorReply):  # libvirt raises for these; should one slip by
            raise AgentError(f"guest agent {cmd} failed: {result.desc}", vm=self.vm,
                             error_class=result.error_class)
        return result.value
