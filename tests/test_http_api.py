"""The HTTP seam: a Starlette app over a DataSource, and HttpSource talking to it.

Scenarios use the deterministic in-memory source; the dashboard-over-HTTP-over-QMP test
lives in test_tui_fake.py.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from balloonctl.errors import (
    ConnectFailed,
    SizeError,
    UnknownVM,
    UnsafeTarget,
    UsageError,
)
from balloonctl.http import HttpSource
from balloonctl.model import BalloonState
from balloonctl.qmp import BalloonEvent
from balloonctl.serve import create_app
from balloonctl.units import GiB, MiB, SizeKind, TargetSpec, parse_target
from tui.targets import absolute
from tui.testing import StaticSource, sample_states


@pytest.fixture
def source() -> StaticSource:
    return StaticSource(sample_states(6))


@pytest.fixture
async def client(source: StaticSource) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(source))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


@pytest.fixture
async def http_source(source: StaticSource) -> AsyncIterator[HttpSource]:
    transport = httpx.ASGITransport(app=create_app(source))
    async with HttpSource("http://test", transport=transport) as s:
        yield s


async def test_vms_lists_every_state_as_its_json(
    client: httpx.AsyncClient, source: StaticSource
) -> None:
    response = await client.get("/v1/vms")
    assert response.status_code == 200
    assert response.json() == [s.to_json() for s in source.states.values()]


async def test_set_target_parses_the_cli_sizes(
    client: httpx.AsyncClient, source: StaticSource
) -> None:
    response = await client.post("/v1/vms/vm1/target", json={"size": "1G"})
    assert response.json() == {"name": "vm1", "target": GiB}
    assert source.calls == [("set_target", "vm1", GiB)]


@pytest.mark.parametrize(
    ("path", "body", "status", "kind"),
    [
        ("/v1/vms/vm1/target", {"size": "lots"}, 400, "SizeError"),
        ("/v1/vms/vm1/target", {"size": "64M", "force": True}, 409, "UnsafeTarget"),
        ("/v1/vms/vm1/target", {"size": "3G"}, 409, "UnsafeTarget"),
        ("/v1/vms/vm1/target", {"force": False}, 400, "UsageError"),
        ("/v1/vms/nope/target", {"size": "1G"}, 404, "UnknownVM"),
        ("/v1/vms/vm1/hint", {"on": "yes"}, 400, "UsageError"),
        ("/v1/vms/vm1/stats", {"interval": -1}, 400, "UsageError"),
        ("/v1/vms/vm1/stats", {"interval": True}, 400, "UsageError"),
    ],
)
async def test_bad_requests_get_json_errors_and_nothing_is_sent(
    client: httpx.AsyncClient, source: StaticSource,
    path: str, body: dict[str, object], status: int, kind: str,
) -> None:
    response = await client.post(path, json=body)
    assert response.status_code == status
    assert response.json()["kind"] == kind
    assert response.json()["error"]
    assert source.calls == []


async def test_body_that_is_not_json_is_a_usage_error(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/vms/vm1/hint", content=b"{on")
    assert (response.status_code, response.json()["kind"]) == (400, "UsageError")


async def test_http_source_returns_the_same_states(
    http_source: HttpSource, source: StaticSource
) -> None:
    states = await http_source.snapshot()
    assert [s.to_json() for s in states] == [s.to_json() for s in source.states.values()]
    assert list(http_source.names) == list(source.names)


async def test_http_source_acts_and_gets_results(
    http_source: HttpSource, source: StaticSource
) -> None:
    assert await http_source.set_target("vm4", parse_target("-256M")) == 2 * GiB - 256 * MiB
    hint = await http_source.set_hint("vm1", True)
    assert hint.enabled and hint.mode.value == "agent"
    await http_source.enable_stats("vm3", 5)
    assert source.calls == [
        ("set_target", "vm4", 2 * GiB - 256 * MiB),
        ("set_hint", "vm1", True),
        ("enable_stats", "vm3", 5),
    ]


async def test_http_source_sends_exact_bytes_not_rounded_text(
    http_source: HttpSource, source: StaticSource
) -> None:
    odd = GiB + 12345 * 4096
    assert await http_source.set_target("vm1", absolute(odd)) == odd


async def test_http_source_raises_the_servers_error_classes(http_source: HttpSource) -> None:
    with pytest.raises(UnsafeTarget, match="above guest RAM"):
        await http_source.set_target("vm1", parse_target("4G"))
    with pytest.raises(UnknownVM):
        await http_source.enable_stats("ghost", 2)
    with pytest.raises(SizeError, match="greater than zero"):
        await http_source.set_target("vm1", TargetSpec(SizeKind.ABSOLUTE, 0, "0"))


async def test_http_source_open_fetches_the_inventory(source: StaticSource) -> None:
    transport = httpx.ASGITransport(app=create_app(source))
    async with await HttpSource.open("http://test", transport=transport) as s:
        assert list(s.names) == [f"vm{i}" for i in range(1, 7)]


async def test_unreachable_agent_is_connect_failed(tmp_path: Path) -> None:
    async with HttpSource(uds=str(tmp_path / "nobody.sock"), timeout=2) as s:
        with pytest.raises(ConnectFailed, match="cannot connect"):
            await s.snapshot()


async def test_usage_error_hierarchy_survives_the_wire(http_source: HttpSource) -> None:
    with pytest.raises(UsageError):
        await http_source.enable_stats("vm1", -5)


async def test_served_over_a_unix_socket(tmp_path: Path, source: StaticSource) -> None:
    sock = tmp_path / "agent.sock"
    server = uvicorn.Server(uvicorn.Config(create_app(source), uds=str(sock),
                                           log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:  # noqa: ASYNC110 - uvicorn offers only this flag
                await asyncio.sleep(0.01)
        async with await HttpSource.open(uds=str(sock)) as s:
            states = await s.snapshot()
            assert [st.name for st in states] == list(source.names)
            assert await s.set_target("vm1", parse_target("1G")) == GiB
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def _roots_after(program: str) -> set[str]:
    code = program + "\nimport sys\nprint(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return set(out.split())


def test_layering_each_side_imports_only_its_framework() -> None:
    client = _roots_after("from balloonctl.http import HttpSource")
    assert "httpx" in client and not client & {"starlette", "uvicorn", "textual"}
    server = _roots_after("from balloonctl.serve import create_app; create_app")
    assert "starlette" in server and not server & {"textual", "uvicorn", "httpx"}
    dashboard = _roots_after("import tui.app")
    assert "textual" in dashboard and not dashboard & {"starlette", "httpx", "uvicorn"}


class EventfulSource(StaticSource):
    """Emits a reconnect (carrying the re-read state) and a BALLOON_CHANGE, then ends."""

    async def events(self) -> AsyncIterator[tuple[str, BalloonEvent]]:
        yield "vm1", BalloonEvent("BALLOONCTL_CONNECTED", {"state": self.states["vm1"]}, 1.0)
        yield "vm1", BalloonEvent("BALLOON_CHANGE", {"actual": GiB}, 2.5)


async def test_events_stream_through_http_with_states_rebuilt() -> None:
    source = EventfulSource(sample_states(2))
    transport = httpx.ASGITransport(app=create_app(source))
    async with HttpSource("http://test", transport=transport) as s:
        got = [pair async for pair in s.events()]
    assert [(name, e.name) for name, e in got] == [
        ("vm1", "BALLOONCTL_CONNECTED"), ("vm1", "BALLOON_CHANGE"),
    ]
    state = got[0][1].data["state"]
    assert isinstance(state, BalloonState)
    assert state.to_json() == source.states["vm1"].to_json()
    assert got[1][1].data == {"actual": GiB} and got[1][1].timestamp == 2.5
