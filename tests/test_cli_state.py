"""The CLI with a state file it cannot use, and what it remembers where (in process, against
the fake QEMU served from a thread)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from balloonctl.cli.app import app
from balloonctl.cli.exitcodes import ExitCode
from balloonctl.fake import FakeVM, run_in_thread
from balloonctl.units import GiB, MiB

Cli = Callable[..., Result]


@pytest.fixture
def vm1(fake_dir: Path) -> Iterator[FakeVM]:
    with run_in_thread(FakeVM("vm1", fake_dir, tick=0.01, rate=4 * GiB)) as vm:
        yield vm


@pytest.fixture
def cli(fake_dir: Path, tmp_path: Path) -> Cli:
    base = {"BALLOONCTL_DIR": str(fake_dir), "BALLOONCTL_CONFIG": str(tmp_path / "no.toml"),
            "BALLOONCTL_WELLKNOWN": ""}

    def invoke(*args: str, state: Path, **env: str) -> Result:
        r = CliRunner().invoke(app, list(args), prog_name="balloonctl",
                               env={**base, "BALLOONCTL_STATE": str(state), **env})
        assert "Traceback" not in r.stderr, r.stderr
        assert all(line.startswith("balloonctl: ") for line in r.stderr.splitlines()), r.stderr
        return r

    return invoke


def bad_state(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "state.json"
    if kind == "directory":
        path.mkdir()
    elif kind == "invalid-json":
        path.write_text('{"/run/vm1.qmp": {"target": ')
    elif kind == "dangling-symlink":
        path.symlink_to(tmp_path / "nowhere" / "state.json")
    elif kind == "non-utf8":
        path.write_bytes(b"\xff\xfe{}")
    return path


KINDS = ["directory", "invalid-json", "dangling-symlink", "non-utf8"]


@pytest.mark.parametrize("kind", KINDS)
def test_status_works_with_an_unusable_state_file_and_names_it_once(
    vm1: FakeVM, cli: Cli, tmp_path: Path, kind: str
) -> None:
    state = bad_state(tmp_path, kind)
    r = cli("status", "--json", state=state)
    assert r.exit_code == ExitCode.OK, r.stderr
    assert [s["name"] for s in json.loads(r.stdout)] == ["vm1"]
    (line,) = r.stderr.splitlines()
    assert line.startswith(f"balloonctl: warning: state file {state}: ")


@pytest.mark.parametrize("kind", KINDS)
def test_a_sent_target_is_reported_as_sent_when_it_cannot_be_remembered(
    vm1: FakeVM, cli: Cli, tmp_path: Path, kind: str
) -> None:
    state = bad_state(tmp_path, kind)
    before = os.readlink(state) if state.is_symlink() else (
        None if state.is_dir() else state.read_bytes())
    r = cli("set", "vm1", "1G", state=state)
    assert r.exit_code == ExitCode.OK, r.stderr
    assert r.stdout.startswith("vm1: target 1 GiB")
    assert vm1.guest.balloon_target == vm1.guest.ram - 1 * GiB  # QEMU got it
    (line,) = r.stderr.splitlines()
    assert line.startswith(f"balloonctl: warning: state file {state}: ")
    assert "will not be remembered" in line
    after = os.readlink(state) if state.is_symlink() else (
        None if state.is_dir() else state.read_bytes())
    assert after == before  # what was there is still there


def test_set_remembers_under_the_sockets_real_path(
    vm1: FakeVM, cli: Cli, tmp_path: Path, fake_dir: Path
) -> None:
    state = tmp_path / "state.json"
    link = tmp_path / "link.qmp"
    link.symlink_to(vm1.qmp_path)
    assert cli("--qmp", f"vm1={link}", "set", "vm1", "1G", state=state).exit_code == 0
    # the same VM by its directory, spelt with a doubled slash: the target is known
    r = cli("--dir", f"/{fake_dir}//", "status", "--json", state=state)
    assert json.loads(r.stdout)[0]["target"] == 1 * GiB
    assert list(json.loads(state.read_text())) == [os.path.realpath(vm1.qmp_path)]
    r = cli("set", "vm1", "+256M", state=state)
    assert r.stdout.startswith("vm1: target 1.2 GiB"), r.stdout  # counted from 1G
    assert vm1.guest.balloon_target == vm1.guest.ram - 1280 * MiB


def test_demo_never_uses_the_users_state_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from balloonctl import store

    opened: list[Path] = []
    original_init = store.FileStore.__init__

    def spy(self: store.FileStore, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        opened.append(self.path)

    monkeypatch.setattr(store.FileStore, "__init__", spy)
    monkeypatch.delenv("BALLOONCTL_STATE")
    home_state = tmp_path / "xdg"
    r = CliRunner().invoke(app, ["demo", "--once", "--vms", "2", "--mem", "1G", "--json"],
                           prog_name="balloonctl",
                           env={"XDG_STATE_HOME": str(home_state),
                                "BALLOONCTL_CONFIG": str(tmp_path / "no.toml"),
                                "BALLOONCTL_WELLKNOWN": ""})
    assert r.exit_code == ExitCode.OK, r.stderr
    assert opened  # the demo did open a store...
    for path in opened:  # ...in its own temporary directory, gone with the demo
        assert not path.is_relative_to(home_state) and not path.parent.exists()
    assert not home_state.exists()
    assert "BALLOONCTL_STATE" not in os.environ  # put back as it was
