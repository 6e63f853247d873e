"""Every status code the HTTP API answers with (``balloonctl.http.server``'s contract:
``{"error", "kind", "vm"}`` with the status of the error's kind), through the real Starlette
app, and the same error class rebuilt by ``HttpSource``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from balloonctl import errors
from balloonctl.errors import BalloonError
from balloonctl.http import HttpSource, create_app
from balloonctl.model import HintState
from balloonctl.units import TargetSpec, parse_target
from tui.testing import StaticSource, sample_states

# The documented status of each kind (most specific first in the tree).
STATUS: list[tuple[BalloonError, int]] = [
    (errors.UnknownVM("no VM named 'x'"), 404),
    (errors.SizeError("invalid size 'x'"), 400),
    (errors.UsageError("bad"), 400),
    (errors.UnsafeTarget("below the floor", vm="vm1"), 422),
    (errors.HintUnsupported("cannot honour", vm="vm1"), 422),
    (errors.NoBalloonDevice("no device", vm="vm1"), 409),
    (errors.DriverNotReady("no driver", vm="vm1"), 409),
    (errors.SocketBusy("held by libvirt", vm="vm1"), 503),
    (errors.ManagedByLibvirt("libvirt's monitor socket", vm="vm1"), 503),
    (errors.BackendMissing("no libvirt-python"), 503),
    (errors.LibvirtUnavailable("libvirtd not running", vm="vm1"), 502),
    (errors.LibvirtDenied("permission denied", vm="vm1"), 502),
    (errors.DomainNotRunning("domain stopped", vm="vm1"), 502),
    (errors.ConnectFailed("refused", vm="vm1"), 502),
    (errors.Disconnected("dropped", vm="vm1"), 502),
    (errors.QMPCommandError("QEMU refused", vm="vm1"), 502),
    (errors.AgentError("agent gone", vm="vm1"), 502),
    (errors.AgentExecBlocked("exec off", vm="vm1"), 502),
    (errors.BadReply("QEMU answered nonsense", vm="vm1"), 502),
    (errors.BadAgentReply("the guest agent answered nonsense", vm="vm1"), 502),
    (errors.QMPTimeout("no reply", vm="vm1"), 504),
    (errors.WaitTimeout("too slow", vm="vm1"), 504),
    (errors.StuckBalloon("stuck", vm="vm1"), 504),
    (errors.HostReadError("host proc/meminfo: no MemTotal", path="proc/meminfo"), 503),
    (errors.JournalError("journal j: cannot write: ENOSPC", path="j"), 503),
    (errors.StateFileError("s", "not JSON"), 503),
]


class FailingSource(StaticSource):
    """Fails every action with ``error``."""

    def __init__(self, error: Exception) -> None:
        super().__init__(sample_states(2))
        self.error = error

    async def set_target(self, name: str, spec: TargetSpec, *, force: bool = False) -> int:
        raise self.error

    async def set_hint(self, name: str, on: bool) -> HintState:
        raise self.error

    async def enable_stats(self, name: str, interval: int) -> None:
        raise self.error


async def client_for(source: StaticSource) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(source), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


def test_every_error_kind_has_its_status() -> None:
    kinds = {type(e).__name__ for e, _ in STATUS}
    assert kinds == set(errors.__all__) - {"BalloonError"}


@pytest.mark.parametrize(("error", "status"), STATUS, ids=lambda x: getattr(
    type(x), "__name__", str(x)))
@pytest.mark.parametrize(("path", "body"), [
    ("/v1/vms/vm1/target", {"size": "1G"}),
    ("/v1/vms/vm1/hint", {"on": True}),
    ("/v1/vms/vm1/stats", {"interval": 2}),
])
async def test_an_error_gets_its_status_and_a_json_body(
    error: BalloonError, status: int, path: str, body: dict[str, object],
) -> None:
    async for client in client_for(FailingSource(error)):
        response = await client.post(path, json=body)
        assert response.status_code == status
        assert response.json() == {"error": error.message, "kind": type(error).__name__,
                                   "vm": error.vm}


@pytest.mark.parametrize(("error", "status"), STATUS[3:], ids=lambda x: getattr(
    type(x), "__name__", str(x)))
async def test_http_source_raises_the_same_error_class(error: BalloonError,
                                                       status: int) -> None:
    transport = httpx.ASGITransport(app=create_app(FailingSource(error)))
    async with HttpSource("http://test", transport=transport) as source:
        with pytest.raises(type(error)) as raised:
            await source.set_target("vm1", parse_target("1G"))
    assert type(raised.value) is type(error)
    assert raised.value.message == error.message and raised.value.vm == error.vm


async def test_a_bug_is_a_500_not_a_balloonctl_error_status() -> None:
    async for client in client_for(FailingSource(RuntimeError("a bug"))):
        response = await client.post("/v1/vms/vm1/target", json={"size": "1G"})
        assert response.status_code == 500


async def test_an_unknown_route_is_404_and_a_wrong_method_405() -> None:
    async for client in client_for(StaticSource(sample_states(1))):
        assert (await client.get("/v1/nothing")).status_code == 404
        assert (await client.get("/v1/vms/vm1/target")).status_code == 405
        assert (await client.post("/v1/vms/nope/stats", json={"interval": 1})).status_code == 404
        ok = await client.post("/v1/vms/vm1/stats", json={"interval": 0})
        assert (ok.status_code, ok.json()) == (200, {"name": "vm1", "interval": 0})
