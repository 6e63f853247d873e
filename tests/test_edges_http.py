"""Every status code the HTTP API answers with (``balloonctl.serve``'s contract, the table
of docs/serve.md: ``{"error", "code", "kind", "vm"}`` with the status of the error's code),
through the real Starlette app, and the same error class rebuilt by ``HttpSource``."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from balloonctl import errors
from balloonctl.errors import BalloonError
from balloonctl.http import HttpSource
from balloonctl.model import HintState
from balloonctl.serve import create_app
from balloonctl.units import TargetSpec, parse_target
from tui.testing import StaticSource, sample_states

# The documented code and status of each kind (docs/serve.md, "Errors").
STATUS: list[tuple[BalloonError, int, str]] = [
    (errors.UnknownVM("no VM named 'x'"), 404, "unknown_vm"),
    (errors.SizeError("invalid size 'x'"), 400, "bad_size"),
    (errors.UsageError("bad"), 400, "bad_request"),
    (errors.UnsafeTarget("below the floor", vm="vm1"), 409, "unsafe_target"),
    (errors.HintUnsupported("cannot honour", vm="vm1"), 409, "hint_unsupported"),
    (errors.NoBalloonDevice("no device", vm="vm1"), 409, "no_balloon_device"),
    (errors.DriverNotReady("no driver", vm="vm1"), 409, "driver_not_ready"),
    (errors.SocketBusy("held by another client", vm="vm1"), 503, "vm_busy"),
    (errors.ManagedByLibvirt("libvirt's monitor socket", vm="vm1"), 503, "vm_busy"),
    (errors.BackendMissing("no libvirt-python"), 503, "backend_missing"),
    (errors.LibvirtUnavailable("libvirtd not running", vm="vm1"), 503, "vm_unreachable"),
    (errors.LibvirtDenied("permission denied", vm="vm1"), 503, "vm_unreachable"),
    (errors.DomainNotRunning("domain stopped", vm="vm1"), 503, "vm_unreachable"),
    (errors.ConnectFailed("refused", vm="vm1"), 503, "vm_unreachable"),
    (errors.Disconnected("dropped", vm="vm1"), 503, "vm_unreachable"),
    (errors.QMPCommandError("QEMU refused", vm="vm1"), 502, "qmp_error"),
    (errors.AgentError("agent gone", vm="vm1"), 502, "qga_error"),
    (errors.AgentExecBlocked("exec off", vm="vm1"), 502, "qga_error"),
    (errors.BadReply("QEMU answered nonsense", vm="vm1"), 502, "bad_reply"),
    (errors.BadAgentReply("the guest agent answered nonsense", vm="vm1"), 502, "qga_error"),
    (errors.QMPTimeout("no reply", vm="vm1"), 504, "vm_timeout"),
    (errors.WaitTimeout("too slow", vm="vm1"), 504, "wait_timeout"),
    (errors.StuckBalloon("stuck", vm="vm1"), 504, "wait_timeout"),
    (errors.HostReadError("host proc/meminfo: no MemTotal", path="proc/meminfo"), 503,
     "host_unreadable"),
    (errors.JournalError("journal j: cannot write: ENOSPC", path="j"), 503, "journal_error"),
    (errors.StateFileError("s", "not JSON"), 503, "state_file_error"),
]


def documented_codes() -> dict[str, int]:
    """docs/serve.md's table of error codes and statuses."""
    text = (Path(__file__).parent.parent / "docs" / "serve.md").read_text()
    rows = re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|$", text, re.MULTILINE)
    return {code: int(status) for code, status in rows}


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
    kinds = {type(e).__name__ for e, _, _ in STATUS}
    assert kinds == set(errors.__all__) - {"BalloonError"}


def test_the_statuses_here_are_the_documented_ones() -> None:
    documented = documented_codes()
    assert len(documented) >= 20  # the table was found
    for _, status, code in STATUS:
        assert documented[code] == status, code


@pytest.mark.parametrize(("error", "status", "code"), STATUS, ids=lambda x: getattr(
    type(x), "__name__", str(x)))
@pytest.mark.parametrize(("path", "body"), [
    ("/v1/vms/vm1/target", {"size": "1G"}),
    ("/v1/vms/vm1/hint", {"on": True}),
    ("/v1/vms/vm1/stats", {"interval": 2}),
])
async def test_an_error_gets_its_status_and_a_json_body(
    error: BalloonError, status: int, code: str, path: str, body: dict[str, object],
) -> None:
    async for client in client_for(FailingSource(error)):
        response = await client.post(path, json=body)
        assert response.status_code == status
        assert response.json() == {"error": error.message, "code": code,
                                   "kind": type(error).__name__, "vm": error.vm}


@pytest.mark.parametrize(("error", "status", "code"), STATUS[3:], ids=lambda x: getattr(
    type(x), "__name__", str(x)))
async def test_http_source_raises_the_same_error_class(error: BalloonError, status: int,
                                                       code: str) -> None:
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
        # the documented body still (docs/serve.md: every error is one), code `internal`
        assert response.json() == {"error": "internal error (RuntimeError); see the "
                                            "service's log", "code": "internal",
                                   "kind": None, "vm": None}


async def test_an_unknown_route_is_404_and_a_wrong_method_405() -> None:
    async for client in client_for(StaticSource(sample_states(1))):
        assert (await client.get("/v1/nothing")).status_code == 404
        assert (await client.get("/v1/vms/vm1/target")).status_code == 405
        assert (await client.post("/v1/vms/nope/stats", json={"interval": 1})).status_code == 404
        ok = await client.post("/v1/vms/vm1/stats", json={"interval": 0})
        assert (ok.status_code, ok.json()) == (200, {"name": "vm1", "interval": 0})


def test_the_host_answer_is_parsed_once_and_a_wrong_shape_is_bad_reply() -> None:
    from balloonctl.errors import BadReply
    from balloonctl.host import HostMemory, Ksm, Psi
    from balloonctl.http.wire import host_from_json
    from balloonctl.serve.api import host_json

    host = HostMemory(total=8 << 30, available=2 << 30, free=1 << 30, cached=512 << 20,
                      anon=3 << 30, swap_total=0, swap_free=0,
                      psi=Psi(4.2, 3.0, 2.0, 1.1, 1.0, 0.5), ksm=Ksm(True, 10, 300, 4096))
    back = host_from_json(host_json(host, 12 << 30))
    assert (back.total, back.available, back.ksm.saved, back.psi.some_avg10) == (  # type: ignore[union-attr]
        8 << 30, 2 << 30, 300 * 4096, 4.2)
    good = host_json(host, 0)
    for bad in ([], {**good, "total": -1}, {**good, "available": "2G"},
                {**good, "total": True}, {**good, "psi": {"some_avg10": 101}},
                {**good, "psi": 3}, {**good, "ksm": {**good["ksm"], "run": 1}},
                {**good, "ksm": {**good["ksm"], "saved": 301}}):
        with pytest.raises(BadReply):
            host_from_json(bad)
