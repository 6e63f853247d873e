"""``LibvirtQga``: the guest agent's replies that come back through libvirt's
``virDomainQemuAgentCommand`` are parsed by the same ``balloonctl.replies`` parsers as those
on a qga socket, so a hostile or broken reply is a ``BadAgentReply`` naming the command and
keeping what came back (a real domain's happy path is in tests/reallibvirt)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from balloonctl.errors import AgentError, BadAgentReply
from balloonctl.libvirt.client import LibvirtClient
from balloonctl.libvirt.qga import LibvirtQga

T = TypeVar("T")


class CannedLibvirt(LibvirtClient):
    """A LibvirtClient whose libvirt layer answers every agent command with the next canned
    text (the layer below LibvirtQga: the text ``qemuAgentCommand`` returns)."""

    def __init__(self, *replies: str) -> None:
        super().__init__("qemu:///system", "dom1")
        self.replies = list(replies)
        self.sent: list[dict[str, Any]] = []

    async def connect(self) -> None:
        return None

    def domain_object(self) -> Any:
        return object()

    async def blocking(self, fn: Callable[[], T], *, op: str,
                       timeout: float | None = None) -> T:  # noqa: ASYNC109
        assert op == "qemuAgentCommand"
        result: Any = self.replies.pop(0)
        return result  # type: ignore[no-any-return]


def agent(*replies: str) -> LibvirtQga:
    return LibvirtQga(CannedLibvirt(*replies), timeout=2.0)


async def test_exec_start_and_status_through_the_parsers() -> None:
    qga = agent(json.dumps({"return": {"pid": 41}}),
                json.dumps({"return": {"exited": False}}),
                json.dumps({"return": {"exited": True, "exitcode": 3, "out-data": "aGk=",
                                       "err-data": "b29wcw=="}}))
    assert await qga.exec_start("/bin/true") == 41
    assert await qga.exec_status(41) is None  # still running
    done = await qga.exec_status(41)
    assert done is not None
    assert (done.exitcode, done.stdout, done.stderr) == (3, b"hi", b"oops")


@pytest.mark.parametrize(("cmd", "reply", "says"), [
    ("start", {"return": {"pid": "41"}}, "'pid'"),
    ("start", {"return": {"pid": -1}}, "'pid'"),
    ("start", {"return": []}, "the reply"),
    ("start", {"retrun": {"pid": 41}}, "return"),
    ("status", {"return": {"exitcode": 0}}, "'exited'"),
    ("status", {"return": {"exited": "yes"}}, "'exited'"),
    ("status", {"return": {"exited": True, "exitcode": 0, "out-data": "%%%"}}, "base64"),
    ("status", {"return": {"exited": True, "exitcode": 2**31}}, "'exitcode'"),
])
async def test_a_reply_of_the_wrong_shape_is_a_bad_agent_reply(
    cmd: str, reply: Any, says: str,
) -> None:
    qga = agent(json.dumps(reply))
    with pytest.raises(BadAgentReply) as caught:
        if cmd == "start":
            await qga.exec_start("/bin/true")
        else:
            await qga.exec_status(41)
    name = "guest-exec" if cmd == "start" else "guest-exec-status"
    assert f"bad reply to {name}: " in str(caught.value) and says in str(caught.value)
    assert caught.value.sent is not None and caught.value.sent["execute"] == name


async def test_text_that_is_not_json_is_a_bad_agent_reply() -> None:
    with pytest.raises(BadAgentReply) as caught:
        await agent("{not json").exec_start("/bin/true")
    assert "bad reply to guest-exec: not JSON" in str(caught.value)
    assert caught.value.received == "{not json"


async def test_an_error_reply_that_libvirt_let_through_is_an_agent_error() -> None:
    reply = {"error": {"class": "GenericError", "desc": "Guest agent command failed"}}
    with pytest.raises(AgentError) as caught:
        await agent(json.dumps(reply)).exec_start("/bin/true")
    assert not isinstance(caught.value, BadAgentReply)
    assert caught.value.error_class == "GenericError"
    assert "guest-exec failed: Guest agent command failed" in str(caught.value)
