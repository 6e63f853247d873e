"""balloonctl serve's API in process: a HostService over a hold-mode Fleet of fake VMs (real
QMP sockets, a simulated host), its Starlette app through httpx.ASGITransport with the
lifespan run as uvicorn runs it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.routing import Route
from waiting import wait_until

from balloonctl.changes import JournalRecorder
from balloonctl.fake import FakeFleet
from balloonctl.fleet import Fleet
from balloonctl.journal import Journal, Origin
from balloonctl.model import JSON_KEYS, Owner, VmRef
from balloonctl.policy import Action
from balloonctl.serve import SERVE_REASON, HostService, create_app
from balloonctl.serve.guard import MAX_BODY, Guard, TokenFile
from balloonctl.serve.metrics import METRICS
from balloonctl.serve.openapi import PATHS
from balloonctl.serve.paths import ensure_token, rotate_token
from balloonctl.units import GiB, MiB
from tui.testing import StaticSource, sample_states

pytestmark = pytest.mark.timeout(60)



def refs_of(directory: Path, n: int) -> list[VmRef]:
    return [VmRef(f"vm{i}", str(directory / f"vm{i}.qmp"), qga=str(directory / f"vm{i}.qga"))
            for i in range(1, n + 1)]


@pytest.fixture
async def fleet(fake_fleet_factory: Callable[..., Awaitable[FakeFleet]]) -> FakeFleet:
    return await fake_fleet_factory(3, ram=2 * GiB, host_mem=8 * GiB)


@pytest.fixture
async def service(fleet: FakeFleet, tmp_path: Path) -> HostService:
    refs = refs_of(fleet.directory, 3)
    journal = Journal(tmp_path / "journal.jsonl")
    # as `balloonctl serve` builds it: the fleet's recorder journals what it sends
    recorder = JournalRecorder(journal, Origin.SET, SERVE_REASON)
    return HostService(Fleet(refs, hold=True, recorder=recorder), refs=refs, interval=0.1,
                       host_root=fleet.directory / "host", journal=journal, label="hv1")


@pytest.fixture
async def api(service: HostService) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(service)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hv1") as client:
            yield client


async def target_of(api: httpx.AsyncClient, name: str) -> Any:
    return (await api.get(f"/v1/vms/{name}")).json()["target"]


async def test_vms_are_the_status_json_of_every_vm(api: httpx.AsyncClient) -> None:
    body = (await api.get("/v1/vms")).json()
    assert [vm["name"] for vm in body] == ["vm1", "vm2", "vm3"]
    assert all(tuple(vm) == JSON_KEYS for vm in body)
    assert all(vm["reachable"] and vm["guest_ram"] == 2 * GiB for vm in body)
    one = await api.get("/v1/vms/vm2")
    assert one.json()["name"] == "vm2" and tuple(one.json()) == JSON_KEYS


async def test_set_target_moves_the_balloon_and_journals_it(
    api: httpx.AsyncClient, service: HostService, fleet: FakeFleet
) -> None:
    reply = await api.post("/v1/vms/vm1/target", json={"size": "1.5G"})
    assert reply.status_code == 200 and reply.json() == {"name": "vm1", "target": 1536 * MiB}
    await wait_until(lambda: fleet["vm1"].guest.actual == 1536 * MiB, within=10)
    assert service.journal is not None
    [entry] = service.journal.read().entries
    assert (entry.vm, entry.previous, entry.target, entry.origin, entry.reason) == \
        ("vm1", 2 * GiB, 1536 * MiB, Origin.SET, "set through balloonctl serve")
    # relative sizes resolve against the target the service just set, as the CLI's do; the
    # client names its origin and reason
    reply = await api.post("/v1/vms/vm1/target", json={
        "size": "-256M", "origin": "dashboard", "reason": "a key press"})
    assert reply.json()["target"] == 1280 * MiB
    assert [(e.origin, e.reason, e.previous) for e in service.journal.read().entries] == [
        (Origin.SET, "set through balloonctl serve", 2 * GiB),
        (Origin.DASHBOARD, "a key press", 1536 * MiB)]


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "text"),
    [
        ("/v1/vms/vm1/target", {"size": "lots"}, 400, "bad_size", "lots"),
        ("/v1/vms/vm1/target", {"size": "3G"}, 409, "unsafe_target", "above guest RAM"),
        ("/v1/vms/vm1/target", {"size": "200M"}, 409, "unsafe_target", "below the safe floor"),
        ("/v1/vms/vm1/target", {"size": "127M", "force": True}, 409, "unsafe_target",
         "below the hard minimum"),
        ("/v1/vms/vm1/target", {"force": False}, 400, "bad_request", "'size' is required"),
        ("/v1/vms/vm1/target", {"size": "1G", "sudo": True}, 400, "bad_request",
         "unknown field 'sudo'"),
        ("/v1/vms/vm1/target", {"size": 1073741824}, 400, "bad_request", "must be a str"),
        ("/v1/vms/vm1/target", {"size": "1G", "origin": "auto"}, 400, "bad_request", "origin"),
        ("/v1/vms/ghost/target", {"size": "1G"}, 404, "unknown_vm", "ghost"),
        ("/v1/vms/vm1/hint", {"on": "yes"}, 400, "bad_request", "must be a boolean"),
        ("/v1/vms/vm1/stats", {"interval": -1}, 400, "bad_request", "0 (off)"),
        ("/v1/vms/vm1/stats", {"interval": True}, 400, "bad_request", "must be a int"),
        ("/v1/vms/vm1/undo", {"steps": 0}, 400, "bad_request", "at least 1"),
    ],
)
async def test_bad_requests_answer_a_stable_code_and_change_nothing(
    api: httpx.AsyncClient, service: HostService, fleet: FakeFleet,
    path: str, body: dict[str, Any], status: int, code: str, text: str,
) -> None:
    reply = await api.post(path, json=body)
    assert reply.status_code == status
    error = reply.json()
    assert error["code"] == code and text in error["error"]
    assert set(error) == {"error", "code", "kind", "vm"}
    assert service.journal is not None and service.journal.read().entries == ()
    assert fleet["vm1"].guest.balloon_target == 0


@pytest.mark.parametrize("raw", [b"{size", b"[1, 2]", b"\xff\xfe", b'"1G"'])
async def test_malformed_bodies_are_400(api: httpx.AsyncClient, raw: bytes) -> None:
    reply = await api.post("/v1/vms/vm1/target", content=raw)
    assert (reply.status_code, reply.json()["code"]) == (400, "bad_request")


async def test_unknown_routes_and_methods_answer_json(api: httpx.AsyncClient) -> None:
    missing = await api.get("/v1/qmp")
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")
    wrong = await api.delete("/v1/vms/vm1")
    assert (wrong.status_code, wrong.json()["code"]) == (405, "method_not_allowed")


def padded(size: int) -> bytes:
    """A valid target body of exactly ``size`` bytes (JSON allows trailing spaces)."""
    body = json.dumps({"size": "1G"}).encode()
    return body + b" " * (size - len(body))


async def test_body_limit_is_exact(api: httpx.AsyncClient, service: HostService) -> None:
    app = Guard(create_app(service, lifespan=False))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://hv1") as client:
        at_limit = await client.post("/v1/vms/vm1/target", content=padded(MAX_BODY))
        assert at_limit.status_code == 200
        over = await client.post("/v1/vms/vm2/target", content=padded(MAX_BODY + 1))
        assert (over.status_code, over.json()["code"]) == (413, "body_too_large")

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
            for _ in range(MAX_BODY // 1024 + 1):
                yield b" " * 1024

        streamed = await client.post("/v1/vms/vm2/target", content=chunks())
        assert streamed.status_code == 413
    assert await target_of(api, "vm2") is None


async def test_token_is_required_and_a_bad_one_changes_nothing(
    api: httpx.AsyncClient, service: HostService, fleet: FakeFleet, tmp_path: Path
) -> None:
    path = tmp_path / "serve.token"
    token = ensure_token(path)
    assert path.stat().st_mode & 0o777 == 0o600
    app = Guard(create_app(service, lifespan=False), token=TokenFile(path))

    def client(header: str | None) -> httpx.AsyncClient:
        headers = {"authorization": header} if header else {}
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://hv1", headers=headers)

    for header in (None, "Bearer wrong", f"Basic {token}", f"Bearer {token}x", "Bearer"):
        async with client(header) as c:
            reply = await c.post("/v1/vms/vm1/target", json={"size": "1G"})
            assert (reply.status_code, reply.json()["code"]) == (401, "unauthorized"), header
            assert reply.headers["www-authenticate"].startswith("Bearer")
            assert (await c.get("/metrics")).status_code == 401
    assert await target_of(api, "vm1") is None and fleet["vm1"].guest.balloon_target == 0
    async with client(f"Bearer {token}") as c:
        assert (await c.post("/v1/vms/vm1/target", json={"size": "1G"})).status_code == 200
    new = rotate_token(path)
    async with client(f"Bearer {token}") as c:
        assert (await c.get("/v1/vms")).status_code == 401
    async with client(f"bearer {new}") as c:
        assert (await c.get("/v1/vms")).status_code == 200


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def exposed(name: str, kind: str) -> str:
    """The name a metric family has in the parser's eyes (counters lose ``_total``)."""
    return name.removesuffix("_total") if kind == "counter" else name


async def test_metrics_parse_and_match_the_snapshots(
    api: httpx.AsyncClient, fleet: FakeFleet
) -> None:
    await api.post("/v1/vms/vm2/target", json={"size": "1G"})
    await wait_until(lambda: fleet["vm2"].guest.actual == GiB, within=10)
    vms = {vm["name"]: vm for vm in (await api.get("/v1/vms")).json()}
    reply = await api.get("/metrics")
    assert reply.headers["content-type"].startswith("text/plain")
    got = families(reply.text)
    documented = {exposed(n, kind) for n, (kind, _) in METRICS.items()}
    assert set(got) - documented == set()
    for name in ("vm_actual_bytes", "vm_target_bytes", "vm_up", "host_memory_total_bytes",
                 "serve_poll_duration_seconds", "serve_polls"):
        assert f"balloonctl_{name}" in got, name
    actual = {s.labels["vm"]: s.value for s in got["balloonctl_vm_actual_bytes"].samples}
    assert set(actual) == {"vm1", "vm2", "vm3"}
    assert {s.labels["vm"]: s.value for s in got["balloonctl_vm_target_bytes"].samples} == \
        {"vm2": GiB}
    assert got["balloonctl_vm_swap_in_bytes"].type == "counter"
    host = got["balloonctl_host_memory_total_bytes"].samples[0].value
    assert host == 8 * GiB
    hist = {s.name: s.value for s in got["balloonctl_serve_poll_duration_seconds"].samples
            if not s.labels}
    assert hist["balloonctl_serve_poll_duration_seconds_count"] >= 1
    assert vms["vm1"]["actual"] == actual["vm1"]


async def test_a_vm_that_goes_away_leaves_the_metrics() -> None:
    source = StaticSource(sample_states(3))
    service = HostService(source)
    app = create_app(service)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        await service.snapshot()  # the first poll is done
        before = families((await client.get("/metrics")).text)
        assert {s.labels["vm"] for s in before["balloonctl_vm_up"].samples} == \
            {"vm1", "vm2", "vm3"}
        del source.states["vm3"]
        source.names = list(source.states)
        await service.poll_once()
        after = families((await client.get("/metrics")).text)
        for family in after.values():
            assert all(s.labels.get("vm") != "vm3" for s in family.samples), family.name


def test_every_route_is_in_the_openapi_document() -> None:
    app = create_app(StaticSource(sample_states(1)))
    routes = {(r.path, m.lower()) for r in app.routes if isinstance(r, Route)
              for m in (r.methods or ()) if m != "HEAD"}
    documented = {(path, method) for path, ops in PATHS.items() for method in ops}
    assert routes == documented


async def test_openapi_is_served(api: httpx.AsyncClient) -> None:
    doc = (await api.get("/v1/openapi.json")).json()
    assert doc["openapi"].startswith("3.") and "/v1/vms/{name}/target" in doc["paths"]


async def test_host_and_plan_read_the_simulated_host(api: httpx.AsyncClient) -> None:
    host = (await api.get("/v1/host")).json()
    assert host["total"] == 8 * GiB and host["guest_ram"] == 6 * GiB
    assert host["summary"].startswith("host 8 GiB")
    plan = (await api.get("/v1/plan")).json()["decisions"]
    assert [d["name"] for d in plan] == ["vm1", "vm2", "vm3"]
    assert all(d["action"] in {a.value for a in Action} and d["reason"] for d in plan)


async def test_history_and_undo_follow_the_journal(
    api: httpx.AsyncClient, fleet: FakeFleet
) -> None:
    await api.post("/v1/vms/vm3/target", json={"size": "1.5G"})
    await api.post("/v1/vms/vm3/target", json={"size": "1G"})
    entries = (await api.get("/v1/history", params={"vm": "vm3"})).json()["entries"]
    assert [e["target"] for e in entries] == [1536 * MiB, GiB]
    assert len((await api.get("/v1/history", params={"limit": "1"})).json()["entries"]) == 1
    bad = await api.get("/v1/history", params={"limit": "-1"})
    assert bad.status_code == 400
    dry = (await api.post("/v1/vms/vm3/undo", json={"dry_run": True})).json()
    assert "target" in dry, dry
    assert dry["target"] == 1536 * MiB and await target_of(api, "vm3") == GiB
    done = await api.post("/v1/vms/vm3/undo", json={"steps": 1})
    assert done.status_code == 200 and done.json()["target"] == 1536 * MiB
    await wait_until(lambda: fleet["vm3"].guest.balloon_target == 512 * MiB, within=10)
    entries = (await api.get("/v1/history", params={"vm": "vm3"})).json()["entries"]
    assert entries[-1]["origin"]["command"] == "undo"
    await api.post("/v1/vms/vm3/undo", json={})
    nothing = await api.post("/v1/vms/vm3/undo", json={})
    assert (nothing.status_code, nothing.json()["code"]) == (409, "conflict")
    assert "nothing left to undo" in nothing.json()["error"]


async def test_a_foreign_writer_is_noticed_and_exported(
    api: httpx.AsyncClient, service: HostService, fleet: FakeFleet
) -> None:
    await api.post("/v1/vms/vm1/target", json={"size": "1.5G"})
    await wait_until(lambda: getattr(service.latest.get("vm1"), "actual", None) == 1536 * MiB,
                     within=10)
    # another QMP client (here: the fake's own device) moves the balloon behind our back
    fleet["vm1"].device.set_target(GiB)  # type: ignore[union-attr]
    await wait_until(lambda: service.foreign("vm1"), within=10)
    assert service.latest["vm1"].owner is Owner.FOREIGN
    got = families((await api.get("/metrics")).text)
    foreign = {s.labels["vm"]: s.value for s in got["balloonctl_vm_foreign_target"].samples}
    assert foreign == {"vm1": 1.0, "vm2": 0.0, "vm3": 0.0}
    writes = {s.labels["vm"]: s.value for s in got["balloonctl_vm_foreign_writes"].samples
              if s.name.endswith("_total")}
    assert writes == {"vm1": 1.0, "vm2": 0.0, "vm3": 0.0}
    undo = await api.post("/v1/vms/vm1/undo", json={})
    assert undo.status_code == 409 and "another writer" in undo.json()["error"]
    # a target set through the service takes the VM back
    await api.post("/v1/vms/vm1/target", json={"size": "1G"})
    await wait_until(lambda: service.latest["vm1"].owner is Owner.BALLOONCTL, within=10)
    assert not service.foreign("vm1")


async def test_auto_is_503_until_a_controller_is_wired(api: httpx.AsyncClient) -> None:
    for reply in (await api.get("/v1/auto"), await api.post("/v1/auto", json={"enabled": True})):
        assert (reply.status_code, reply.json()["code"]) == (503, "unavailable")
        assert "start balloonctl serve with --auto" in reply.json()["error"]




async def test_what_a_vm_or_its_guest_agent_does_wrong_has_its_own_status_never_500(
    fake_fleet_factory: Callable[..., Awaitable[FakeFleet]], tmp_path: Path,
) -> None:
    """docs/serve.md's 409 (the hint cannot be honoured), 502 (QEMU or the guest agent
    refused) and 504 (the VM did not answer in time), each from a real fake VM."""
    fleet = await fake_fleet_factory(3, ram=2 * GiB, host_mem=8 * GiB)
    refs = refs_of(fleet.directory, 3)
    refs[2] = VmRef("vm3", refs[2].qmp)  # no guest agent given for vm3
    service = HostService(Fleet(refs, hold=True, command_timeout=1.0), refs=refs, interval=0.1,
                          host_root=fleet.directory / "host", journal=None, label="hv1")
    app = create_app(service)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hv1") as api:

            async def post(path: str, body: dict[str, Any]) -> tuple[int, str, str | None]:
                reply = await api.post(path, json=body)
                error = reply.json()
                return reply.status_code, error.get("code"), error.get("vm")

            fleet["vm1"].faults.errors["balloon"] = ("GenericError", "balloon refused")
            assert await post("/v1/vms/vm1/target", {"size": "1.5G"}) == (
                502, "qmp_error", "vm1")
            qga = fleet["vm2"].qga
            assert qga is not None
            qga.exec_enabled = False
            assert await post("/v1/vms/vm2/hint", {"on": True}) == (502, "qga_error", "vm2")
            assert await post("/v1/vms/vm3/hint", {"on": True}) == (
                409, "hint_unsupported", "vm3")
            del fleet["vm1"].faults.errors["balloon"]
            fleet["vm1"].faults.delay["balloon"] = 30.0
            assert await post("/v1/vms/vm1/target", {"size": "1.5G"}) == (
                504, "vm_timeout", "vm1")


async def test_a_bug_in_the_service_is_a_500_with_the_documented_body(
    service: HostService, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def bug(*args: Any, **kwargs: Any) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(service, "set_hint", bug)
    app = create_app(service)
    async with app.router.lifespan_context(app):
        # as uvicorn: the exception goes on to the server's log after the answer
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://hv1") as api:
            reply = await api.post("/v1/vms/vm1/hint", json={"on": True})
            assert reply.status_code == 500
            assert reply.json() == {"error": "internal error (KeyError); see the service's "
                                             "log", "code": "internal", "kind": None,
                                    "vm": None}
            # the service goes on answering
            assert (await api.get("/v1/vms/vm1")).status_code == 200
