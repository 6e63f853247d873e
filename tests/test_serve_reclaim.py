"""Taking a VM back from another writer through balloonctl serve (``POST
/v1/vms/NAME/reclaim``, ``HttpSource.reclaim``, ``MultiHost.reclaim``): a real service over a
fake fleet, auto wired as ``balloonctl serve`` wires it. A VM another writer moved is left
alone by the service's auto until it is taken back; then auto's next cycle manages it again.
Oracles: the service's own JSON (``GET /v1/vms`` owner, ``GET /v1/auto`` decisions), the
journal, and docs/serve.md."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from idlefleet import idle_fleet
from waiting import wait_until

from balloonctl.auto import AutoController
from balloonctl.changes import JournalRecorder
from balloonctl.config import scan_dir
from balloonctl.errors import BadReply, BalloonError, UnknownVM
from balloonctl.fake import FakeFleet
from balloonctl.fleet import Fleet
from balloonctl.host import host_root_for
from balloonctl.http.client import HttpSource
from balloonctl.http.hosts import MultiHost
from balloonctl.journal import Journal, Origin
from balloonctl.policy import PolicySettings
from balloonctl.serve import SERVE_REASON, HostService, create_app
from balloonctl.serve.guard import MAX_BODY, Guard
from balloonctl.serve.paths import ensure_token
from balloonctl.serve.runner import Listener, serve
from balloonctl.store import FileStore
from balloonctl.units import GiB, MiB, parse_target

pytestmark = pytest.mark.timeout(90)

RAM = 2 * GiB
POLICY = PolicySettings(cycle=0.5, max_step=512 * MiB, psi_threshold=99.0)



@pytest.fixture
async def fake_fleet(fake_dir: Path) -> AsyncIterator[FakeFleet]:
    """Three idle 2 GiB guests on a simulated 8 GiB host: room enough that auto has no
    pressure to act on."""
    async with idle_fleet(fake_dir, ram=RAM, host_mem=8 * GiB, stats_interval=1) as fleet:
        yield fleet


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "journal.jsonl")


def build(fake_dir: Path, tmp_path: Path, journal: Journal, *, auto: bool) -> HostService:
    """A service as ``balloonctl serve`` builds it: auto wired and off (``auto``), or left
    out (``--no-auto``)."""
    refs = scan_dir(fake_dir)
    fleet = Fleet(refs, hold=True, store=FileStore(tmp_path / "state.json"),
                  recorder=JournalRecorder(journal, Origin.SET, SERVE_REASON))
    controller = None
    if auto:
        controller = AutoController(fleet, settings=POLICY, host_root=host_root_for(fake_dir),
                                    journal=journal)
        controller.enabled = set()
    return HostService(fleet, refs=refs, interval=0.2, host_root=host_root_for(fake_dir),
                       journal=journal, policy=POLICY, auto=controller, label="hv1")


@asynccontextmanager
async def over_tcp(service: HostService, token_file: Path) -> AsyncIterator[str]:
    """``service`` served by the real runner on a loopback port with a token; its URL."""
    loop = asyncio.get_running_loop()
    bound: asyncio.Future[Listener] = loop.create_future()

    def ready(listener: Listener) -> None:  # called on the HTTP thread
        loop.call_soon_threadsafe(bound.set_result, listener)

    task = asyncio.create_task(serve(service, tcp=("127.0.0.1", 0), token_file=token_file,
                                     ready=ready))
    try:
        listener = await asyncio.wait_for(bound, 20)
        yield f"http://127.0.0.1:{listener.port}"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def vm_json(service: HostService, name: str) -> dict[str, Any]:
    return service.latest[name].to_json()


def decision_of(service: HostService, name: str) -> dict[str, Any]:
    return next(d for d in service.auto_status()["decisions"] if d["name"] == name)


async def test_a_foreign_vm_is_left_alone_until_taken_back_then_auto_manages_it(
    fake_fleet: FakeFleet, fake_dir: Path, tmp_path: Path, journal: Journal,
) -> None:
    service = build(fake_dir, tmp_path, journal, auto=True)
    token = ensure_token(tmp_path / "serve.token")
    async with over_tcp(service, tmp_path / "serve.token") as url, \
            HttpSource(url, token=token) as client, HttpSource(url) as stranger:
        # balloonctl sets vm2's target through the service; then another writer (the fake's
        # own device: the service holds the QMP socket) moves the balloon behind its back
        assert await client.set_target("vm2", parse_target("1.5G")) == 1536 * MiB
        await wait_until(lambda: vm_json(service, "vm2")["actual"] == 1536 * MiB
                         and vm_json(service, "vm2")["owner"] == "balloonctl",
                         within=20, what="vm2 at 1.5 GiB, balloonctl's")
        fake_fleet["vm2"].device.set_target(GiB)  # type: ignore[union-attr]
        await wait_until(lambda: vm_json(service, "vm2")["owner"] == "foreign",
                         within=20, what="vm2 foreign")
        listed = {vm.name: vm for vm in await client.snapshot()}  # GET /v1/vms
        assert listed["vm2"].to_json()["owner"] == "foreign"

        # auto on: it leaves vm2 alone, journals the foreign move once, sends nothing to it
        await client.post("/auto", {"enabled": True})
        await wait_until(lambda: any(e.vm == "vm2" and e.origin is Origin.FOREIGN
                                     for e in journal.read().entries),
                         within=20, what="the foreign move journaled")
        cycles = service.health.auto_cycles
        await wait_until(lambda: service.health.auto_cycles >= cycles + 2, within=20,
                         what="two more cycles")
        left = decision_of(service, "vm2")
        assert left["action"] == "leave" and "another writer" in left["reason"]
        assert fake_fleet["vm2"].guest.actual == GiB
        assert not any(e.vm == "vm2" and e.origin is Origin.AUTO
                       for e in journal.read().entries)
        before = [e for e in journal.read().entries if e.origin is not Origin.AUTO]

        # without the token: 401, and vm2 stays foreign
        with pytest.raises(BalloonError, match="token") as denied:
            await stranger.reclaim("vm2")
        assert "token" in denied.value.message
        assert vm_json(service, "vm2")["owner"] == "foreign"

        assert await client.reclaim("vm2") is True
        assert (await client.state("vm2")).owner is None  # no mark, no target of ours
        taken = service.health.auto_cycles
        await wait_until(lambda: service.health.auto_cycles >= taken + 1
                         and "another writer" not in decision_of(service, "vm2")["reason"],
                         within=20, what="a cycle that manages vm2")
        # auto adopts the balloon where it stands (or moves it): balloonctl's again
        await wait_until(lambda: vm_json(service, "vm2")["owner"] == "balloonctl", within=20,
                         what="vm2 owned by balloonctl")
        listed = {vm.name: vm for vm in await client.snapshot()}
        assert listed["vm2"].to_json()["owner"] == "balloonctl"

        assert await client.reclaim("vm2") is False  # nothing marked any more
        with pytest.raises(UnknownVM, match="vm9"):
            await client.reclaim("vm9")
        # taking back journals nothing (as `auto --reclaim`): only auto's own entries came
        after = [e for e in journal.read().entries if e.origin is not Origin.AUTO]
        assert after == before


@pytest.fixture
async def api(fake_fleet: FakeFleet, fake_dir: Path, tmp_path: Path,
              journal: Journal) -> AsyncIterator[httpx.AsyncClient]:
    app = Guard(create_app(build(fake_dir, tmp_path, journal, auto=True), lifespan=False))
    inner = app.app
    async with inner.router.lifespan_context(inner):  # type: ignore[attr-defined]
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://hv1") as client:
            yield client


async def test_body_is_an_empty_object_or_nothing(api: httpx.AsyncClient) -> None:
    for body in (b"", b"{}", b"  {} ", b"{}" + b" " * (MAX_BODY - 2)):
        reply = await api.post("/v1/vms/vm1/reclaim", content=body)
        assert (reply.status_code, reply.json()) == (
            200, {"name": "vm1", "reclaimed": False}), body[:8]
    over = await api.post("/v1/vms/vm1/reclaim", content=b"{}" + b" " * (MAX_BODY - 1))
    assert (over.status_code, over.json()["code"]) == (413, "body_too_large")
    for body, why in ((b'{"force": true}', "unknown field 'force' (expected: no fields)"),
                      (b"[]", "must be a JSON object"), (b"{", "not JSON")):
        reply = await api.post("/v1/vms/vm1/reclaim", content=body)
        assert (reply.status_code, reply.json()["code"]) == (400, "bad_request"), body
        assert why in reply.json()["error"]
    unknown = await api.post("/v1/vms/vm9/reclaim", json={})
    assert (unknown.status_code, unknown.json()["code"]) == (404, "unknown_vm")
    assert (await api.get("/v1/vms/vm1/reclaim")).status_code == 405


async def test_without_auto_it_is_503_unavailable(
    fake_fleet: FakeFleet, fake_dir: Path, tmp_path: Path, journal: Journal,
) -> None:
    app = create_app(build(fake_dir, tmp_path, journal, auto=False))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://hv1") as api:
        reply = await api.post("/v1/vms/vm1/reclaim", json={})
        assert (reply.status_code, reply.json()["code"]) == (503, "unavailable")
        assert "start balloonctl serve with --auto" in reply.json()["error"]
        unknown = await api.post("/v1/vms/vm9/reclaim")  # an unknown VM is still 404
        assert (unknown.status_code, unknown.json()["code"]) == (404, "unknown_vm")


def answering(body: Any, seen: list[str] | None = None) -> httpx.MockTransport:
    """A service that answers every request with ``body`` (recording the paths)."""
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(f"{request.method} {request.url.path} {request.content.decode()}")
        return httpx.Response(200, content=json.dumps(body).encode(),
                              headers={"content-type": "application/json"})

    return httpx.MockTransport(handler)


@pytest.mark.parametrize(("body", "why"), [
    ([], "expected an object"),
    ("true", "expected an object"),
    ({"reclaimed": True}, "'name' is not 'vm1'"),
    ({"name": "vm2", "reclaimed": True}, "'name' is not 'vm1'"),
    ({"name": "vm1"}, "'reclaimed' is not true or false"),
    ({"name": "vm1", "reclaimed": 1}, "'reclaimed' is not true or false"),
    ({"name": "vm1", "reclaimed": "yes"}, "'reclaimed' is not true or false"),
    ({"name": "vm1", "reclaimed": None}, "'reclaimed' is not true or false"),
])
async def test_wrong_reply_shapes_are_bad_replies(body: Any, why: str) -> None:
    async with HttpSource(transport=answering(body)) as source:
        with pytest.raises(BadReply, match=why) as bad:
            await source.reclaim("vm1")
    assert "POST /v1/vms/vm1/reclaim" in bad.value.message


async def test_multihost_routes_a_row_to_its_hosts_service() -> None:
    seen1: list[str] = []
    seen2: list[str] = []
    multi = MultiHost([
        ("hv1", HttpSource(transport=answering({"name": "vm1", "reclaimed": False}, seen1))),
        ("hv2", HttpSource(transport=answering({"name": "vm1", "reclaimed": True}, seen2)))])
    try:
        assert await multi.reclaim("hv2/vm1") is True
        assert (seen1, seen2) == ([], ["POST /v1/vms/vm1/reclaim {}"])
        assert await multi.reclaim("hv1/vm1") is False
        assert seen1 == ["POST /v1/vms/vm1/reclaim {}"]
        with pytest.raises(UnknownVM, match="hv3/vm1"):
            await multi.reclaim("hv3/vm1")
    finally:
        await multi.close()
