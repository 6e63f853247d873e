"""Shared fixtures."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from balloonctl.units import GiB

# --- `./dev mutate` -------------------------------------------------------------------------


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under mutmut (it sets ``MUTANT_UNDER_TEST`` in the process running a mutant's tests),
    run the Hypothesis tests last: with ``-x`` a mutant a plain test kills stops there, and
    only the survivors pay for the property tests' hundreds of examples."""
    if "MUTANT_UNDER_TEST" in os.environ:
        items.sort(key=lambda item: hasattr(getattr(item, "obj", None), "hypothesis"))


# --- isolation ----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def private_state_file(tmp_path_factory: pytest.TempPathFactory,
                       monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test remembers into a state file of its own, never the user's real one
    (``$BALLOONCTL_STATE`` is inherited by the CLI processes tests start, too)."""
    path = tmp_path_factory.mktemp("state") / "state.json"
    monkeypatch.setenv("BALLOONCTL_STATE", str(path))
    return path


# --- the fake QEMU (balloonctl.fake) ----------------------------------------------------


@pytest.fixture
def fake_dir() -> Iterator[Path]:
    """A short socket directory (unix socket paths must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="bf-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# Fast defaults for tests: the balloon moves 4 GiB/s and the timer ticks every 10 ms; the
# guest pushes stats every 2 s (a VM with polling off is `stale`).
FAKE_FAST: dict[str, Any] = {"tick": 0.01, "rate": 4 * GiB, "stats_interval": 2}


@pytest.fixture
async def fake_vm_factory(fake_dir: Path) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """``await fake_vm_factory(name="vm1", **FakeVM kwargs)`` -> a started FakeVM, fast
    defaults (``FAKE_FAST``); every VM is stopped at teardown."""
    from balloonctl.fake import FakeVM

    vms: list[FakeVM] = []

    async def make(name: str = "vm1", **kwargs: Any) -> FakeVM:
        vm = FakeVM(name, fake_dir, **{**FAKE_FAST, **kwargs})
        await vm.start()
        vms.append(vm)
        return vm

    yield make
    for vm in vms:
        await vm.stop()


@pytest.fixture
async def fake_vm(fake_vm_factory: Callable[..., Awaitable[Any]]) -> Any:
    """One started fake VM "vm1" with the fast test defaults."""
    return await fake_vm_factory()


# --- BalloonClient against the fake (tests/test_client_*.py) ---------------------------


@pytest.fixture
async def client_for() -> AsyncIterator[Callable[..., Any]]:
    """``client_for(vm, agent=False, **BalloonClient kwargs)`` -> an unconnected
    BalloonClient for a fake VM, named after it, with short test timeouts (connect 1 s,
    command 2 s) and the VM's guest-agent socket when ``agent``; all closed at teardown."""
    from balloonctl.qmp import BalloonClient

    clients: list[BalloonClient] = []

    def make(vm: Any, *, agent: bool = False, **kwargs: Any) -> BalloonClient:
        kwargs.setdefault("connect_timeout", 1.0)
        kwargs.setdefault("command_timeout", 2.0)
        if agent:
            kwargs.setdefault("qga", str(vm.qga_path))
        client = BalloonClient(str(vm.qmp_path), name=vm.name, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


# --- more of the fake QEMU ------------------------------------------------------------


@pytest.fixture
async def fake_fleet_factory(fake_dir: Path) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """``await fake_fleet_factory(n, **FakeVM kwargs)`` -> a started FakeFleet of vm1..vmN
    in ``fake_dir`` with the fast test defaults; stopped at teardown."""
    from balloonctl.fake import FakeFleet

    fleets: list[FakeFleet] = []

    async def make(n: int = 3, **kwargs: Any) -> FakeFleet:
        fleet = FakeFleet(n, fake_dir, **{**FAKE_FAST, **kwargs})
        await fleet.start()
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        await fleet.stop()


# --- the journal: no test (nor a balloonctl it starts) writes the user's real one ----------


@pytest.fixture(autouse=True)
def _journal_in_tmp(monkeypatch: pytest.MonkeyPatch,
                    tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test, and every process it starts, journals to its own temp file
    (``$BALLOONCTL_JOURNAL`` wins over config and the default path)."""
    path = tmp_path_factory.mktemp("journal") / "journal.jsonl"
    monkeypatch.setenv("BALLOONCTL_JOURNAL", str(path))
    return path
