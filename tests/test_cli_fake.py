"""``balloonctl fake`` as a real process: signals with clients connected, the directory it
serves in (its own temp dir is gone afterwards), names and socket paths it refuses before it
creates anything. Everything is synchronised on the lines the processes print."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from balloonctl.cli.exitcodes import ExitCode

BALLOONCTL = str(Path(sys.executable).with_name("balloonctl"))
SERVING = "balloonctl: serving"
STOPPED = "balloonctl: fake fleet stopped"


@pytest.fixture
def tmpdir_env(fake_dir: Path, tmp_path: Path) -> dict[str, str]:
    """The child's environment: its temp dir is ``fake_dir / "tmp"`` (short, and empty so
    a test can see what the fake leaves behind), nothing from the user's own setup."""
    (fake_dir / "tmp").mkdir()
    e = {k: v for k, v in os.environ.items() if not k.startswith("_BALLOONCTL")}
    e.update({"TMPDIR": str(fake_dir / "tmp"), "BALLOONCTL_DIR": str(fake_dir / "none"),
              "BALLOONCTL_STATE": str(tmp_path / "state"),
              "BALLOONCTL_CONFIG": str(tmp_path / "absent.toml"), "BALLOONCTL_WELLKNOWN": ""})
    return e


class Fake:
    """A running ``balloonctl fake``: ``lines`` are its VM lines once it serves."""

    def __init__(self, env: dict[str, str], *args: str, vms: int = 2) -> None:
        self.proc = subprocess.Popen(
            [BALLOONCTL, "fake", "--vms", str(vms), "--mem", "1G", *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        # one "NAME qmp=PATH qga=PATH" line per VM, printed once every socket listens
        self.lines = [self.proc.stdout.readline().rstrip("\n") for _ in range(vms)]
        assert all(" qmp=" in line for line in self.lines), self.lines

    def path(self, vm: int, kind: str = "qmp") -> Path:
        for field in self.lines[vm - 1].split()[1:]:
            key, _, value = field.partition("=")
            if key == kind:
                return Path(value)
        raise AssertionError(f"no {kind}= in {self.lines[vm - 1]!r}")

    def stop(self, sig: signal.Signals) -> tuple[int, str]:
        """Send ``sig``; (exit code, stderr) once it ended."""
        self.proc.send_signal(sig)
        _, err = self.proc.communicate(timeout=20)
        return self.proc.returncode, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=20)


@pytest.fixture
def fakes() -> Iterator[list[Fake]]:
    started: list[Fake] = []
    yield started
    for fake in started:
        fake.kill()


def greeted(path: Path) -> socket.socket:
    """A raw client on ``path`` that has read the server's first line (served, not queued)."""
    client = socket.socket(socket.AF_UNIX)
    client.settimeout(20)
    client.connect(str(path))
    buf = b""
    while b"\n" not in buf:
        chunk = client.recv(4096)
        assert chunk, "the server closed before it greeted"
        buf += chunk
    return client


def queued(path: Path) -> socket.socket:
    """A raw client connected to ``path`` behind the one being served (QEMU serves one)."""
    client = socket.socket(socket.AF_UNIX)
    client.connect(str(path))
    return client


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_with_clients_connected_ends_the_fake_cleanly(
    tmpdir_env: dict[str, str], fake_dir: Path, fakes: list[Fake], sig: signal.Signals,
) -> None:
    where = fake_dir / "vms"
    fake = Fake(tmpdir_env, "--dir", str(where))
    fakes.append(fake)
    qmp = greeted(fake.path(1))
    qmp.sendall(b'{"execute": "qmp_capabilities"}')
    assert b'"return"' in qmp.recv(4096)  # a negotiated client, mid-session
    waiting = queued(fake.path(1))        # and one waiting for its turn
    qga = socket.socket(socket.AF_UNIX)   # a guest-agent client (qemu-ga sends no greeting)
    qga.connect(str(fake.path(1, "qga")))
    qga.sendall(b'{"execute": "guest-ping"}\n')
    assert qga.makefile("rb").readline() == b'{"return": {}}\n'
    try:
        code, err = fake.stop(sig)
        assert qmp.recv(4096) == b""  # the fake hung up on it
    finally:
        for client in (qmp, waiting, qga):
            client.close()
    assert code == ExitCode.OK, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert lines[0].startswith(SERVING) and lines[1:] == [STOPPED], err
    assert not where.exists()  # every socket removed, and the directory the fake made


# --- the directory it serves in ----------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_its_own_temp_dir_is_gone_after_a_signal(
    tmpdir_env: dict[str, str], fake_dir: Path, fakes: list[Fake], sig: signal.Signals,
) -> None:
    tmp = fake_dir / "tmp"
    fake = Fake(tmpdir_env, "--host-mem", "4G")  # no --dir: a temp dir of its own
    fakes.append(fake)
    made = fake.path(1).parent
    assert made.parent == tmp and made.name.startswith("balloonctl-fake-")
    assert (made / "host").is_dir() and fake.path(2).is_socket()
    code, err = fake.stop(sig)
    assert code == ExitCode.OK and "Traceback" not in err, err
    assert os.listdir(tmp) == []


def test_a_dir_that_existed_stays_with_what_else_it_holds(
    tmpdir_env: dict[str, str], fake_dir: Path, fakes: list[Fake],
) -> None:
    where = fake_dir / "mine"
    where.mkdir()
    (where / "notes.txt").write_text("the operator's")
    fake = Fake(tmpdir_env, "--dir", str(where))
    fakes.append(fake)
    code, err = fake.stop(signal.SIGTERM)
    assert code == ExitCode.OK, err
    assert os.listdir(where) == ["notes.txt"]
    # a --dir it made (two levels) is gone, unless something else was put in it meanwhile
    deep = fake_dir / "a" / "b"
    fake = Fake(tmpdir_env, "--dir", str(deep))
    fakes.append(fake)
    (fake_dir / "a" / "keep").write_text("")
    assert fake.stop(signal.SIGTERM)[0] == ExitCode.OK
    assert not deep.exists() and os.listdir(fake_dir / "a") == ["keep"]


def refused(env: dict[str, str], *args: str) -> str:
    """The one stderr line of a ``balloonctl fake`` that refuses to start (exit 2)."""
    r = subprocess.run([BALLOONCTL, "fake", "--mem", "1G", *args], env=env,
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == ExitCode.USAGE, r.stderr
    assert r.stdout == "" and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("balloonctl: error: ")
    return r.stderr.removeprefix("balloonctl: error: ").rstrip("\n")


@pytest.mark.parametrize(("args", "says"), [
    (["--mem", "1"], "guest RAM must be at least 64 MiB"),
    (["--no-driver", "vm9"], "no VM named vm9"),
    (["--host-mem", "255M"], "needs at least 256 MiB"),
])
def test_a_start_up_failure_leaves_no_directory(
    tmpdir_env: dict[str, str], fake_dir: Path, args: list[str], says: str,
) -> None:
    assert says in refused(tmpdir_env, *args)  # in a temp dir of its own
    assert os.listdir(fake_dir / "tmp") == []
    where = fake_dir / "new"
    assert says in refused(tmpdir_env, "--dir", str(where), *args)
    assert not where.exists()  # refused before it was created


# --- names and paths it refuses before creating anything --------------------------------


@pytest.mark.parametrize(("prefix", "shown", "why"), [
    ("../x", "../x", "contains '/'"),
    ("a/b", "a/b", "contains '/'"),
    ("..", "..", "contains '..'"),
    ("x..y", "x..y", "contains '..'"),
    ("x\x1b[31m", "x\\x1b[31m", "contains a control character"),
    ("x\ny", "x\\ny", "contains a control character"),
    ("x\x7f", "x\\x7f", "contains a control character"),
    ("x\u202e", "x\\u202e", "contains a control character"),
])
def test_prefix_cannot_leave_the_dir(
    tmpdir_env: dict[str, str], fake_dir: Path, prefix: str, shown: str, why: str,
) -> None:
    where = fake_dir / "d" / "vms"
    assert refused(tmpdir_env, "--dir", str(where), "--prefix", prefix) == (
        f"--prefix '{shown}' {why} (VM names are socket file names in --dir)")
    assert os.listdir(fake_dir) == ["tmp"] and os.listdir(fake_dir / "tmp") == []
    assert refused(tmpdir_env, "--prefix", prefix).startswith(f"--prefix '{shown}' ")
    assert os.listdir(fake_dir / "tmp") == []


def test_prefix_with_a_nul_is_refused() -> None:
    # no process can be given a NUL in an argument: the CLI's parsing, in this process
    from typer.testing import CliRunner

    from balloonctl.cli.app import app

    r = CliRunner().invoke(app, ["fake", "--dir", "/nonexistent/d", "--prefix", "a\0b"],
                           prog_name="balloonctl")
    assert r.exit_code == ExitCode.USAGE
    assert r.stderr == ("balloonctl: error: --prefix 'a\\x00b' contains a NUL character "
                        "(VM names are socket file names in --dir)\n")


def test_a_prefix_with_a_dot_is_fine(
    tmpdir_env: dict[str, str], fake_dir: Path, fakes: list[Fake],
) -> None:
    where = fake_dir / "vms"
    fake = Fake(tmpdir_env, "--dir", str(where), "--prefix", "web.v", vms=1)
    fakes.append(fake)
    assert fake.lines[0].split()[:2] == ["web.v1", f"qmp={where}/web.v1.qmp"]
    assert fake.stop(signal.SIGTERM)[0] == ExitCode.OK


def dir_for(base: Path, socket_name: str, size: int, fill: str = "d") -> Path:
    """A directory under ``base`` whose ``socket_name`` path is ``size`` bytes long."""
    room = size - len(os.fsencode(f"{base}/")) - len(f"/{socket_name}")
    where = base / (fill + "d" * (room - len(fill.encode())))
    assert len(os.fsencode(str(where / socket_name))) == size
    return where


def test_a_socket_path_of_107_bytes_is_served(
    tmpdir_env: dict[str, str], fake_dir: Path, fakes: list[Fake],
) -> None:
    where = dir_for(fake_dir, "vm1.qmp", 107)
    fake = Fake(tmpdir_env, "--dir", str(where), vms=1)
    fakes.append(fake)
    r = subprocess.run([BALLOONCTL, "status", "vm1", "--json"],
                       env={**tmpdir_env, "BALLOONCTL_DIR": str(where)},
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == ExitCode.OK, r.stderr
    assert fake.stop(signal.SIGTERM)[0] == ExitCode.OK
    assert not where.exists()


@pytest.mark.parametrize(("vms", "longest", "fill"), [
    (1, "vm1.qmp", "d"),
    (10, "vm10.qmp", "d"),  # vm9.qmp would fit: the longest name counts
    (1, "vm1.qmp", "\u00e9"),  # 107 characters, 108 bytes: bytes count
])
def test_a_socket_path_of_108_bytes_is_refused_before_anything_exists(
    tmpdir_env: dict[str, str], fake_dir: Path, vms: int, longest: str, fill: str,
) -> None:
    where = dir_for(fake_dir, longest, 108, fill)
    said = refused(tmpdir_env, "--vms", str(vms), "--dir", str(where), "--host-mem", "8G")
    assert said == (f"socket path {where / longest} is 108 bytes; a unix socket path holds "
                    "at most 107 (sun_path is 108 bytes with the NUL): choose a shorter --dir")
    assert os.listdir(fake_dir) == ["tmp"]  # no directory, no sockets, no host


def test_a_temp_dir_too_deep_for_its_sockets_is_removed(
    tmpdir_env: dict[str, str], fake_dir: Path,
) -> None:
    deep = dir_for(fake_dir, "balloonctl-fake-12345678/vm1.qmp", 108)
    deep.mkdir()
    said = refused({**tmpdir_env, "TMPDIR": str(deep)}, "--vms", "1")
    assert said.startswith(f"socket path {deep}/balloonctl-fake-") and " 108 bytes;" in said
    assert os.listdir(deep) == []


# --- python -m balloonctl.fake, the same fleet without typer ------------------------------


def test_python_m_fake_removes_its_temp_dir(tmpdir_env: dict[str, str], fake_dir: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "balloonctl.fake", "--vms", "1", "--mem", "1G"],
        env=tmpdir_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(f"vm1 qmp={fake_dir / 'tmp'}/balloonctl-fake-"), line
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert os.listdir(fake_dir / "tmp") == []
    where = dir_for(fake_dir, "vm1.qmp", 108)
    r = subprocess.run([sys.executable, "-m", "balloonctl.fake", "--vms", "1", "--dir",
                        str(where)], env=tmpdir_env, capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 2 and r.stderr.startswith("balloonctl: error: socket path "), r.stderr
    assert os.listdir(fake_dir) == ["tmp"] and os.listdir(fake_dir / "tmp") == []


# --- balloonctl demo: the same fleet in a temp dir of its own -----------------------------


def test_demo_once_leaves_nothing_and_refuses_in_one_line(
    tmpdir_env: dict[str, str], fake_dir: Path,
) -> None:
    tmp = fake_dir / "tmp"
    tmpdir_env = {**tmpdir_env, "BALLOONCTL_DIR": str(fake_dir)}  # demo wants it to exist

    def demo(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([BALLOONCTL, "demo", "--once", "--vms", "2", *args], env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    r = demo(tmpdir_env)
    assert r.returncode == ExitCode.OK, r.stderr
    assert [line.split()[0] for line in r.stdout.splitlines()[1:]] == ["vm1", "vm2"]
    assert os.listdir(tmp) == []
    r = demo(tmpdir_env, "--mem", "1")
    assert (r.returncode, r.stderr) == (ExitCode.USAGE, "balloonctl: error: cannot simulate "
                                        "that fleet: guest RAM must be at least 64 MiB\n")
    assert os.listdir(tmp) == []
    deep = dir_for(fake_dir, "balloonctl-demo-12345678/vm2.qga", 108)
    deep.mkdir()
    r = demo({**tmpdir_env, "TMPDIR": str(deep)})
    assert r.returncode == ExitCode.USAGE and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"balloonctl: error: socket path {deep}/balloonctl-demo-")
    assert r.stderr.endswith(" is 108 bytes; a unix socket path holds at most 107 (sun_path "
                             "is 108 bytes with the NUL): choose a shorter TMPDIR\n")
    assert os.listdir(deep) == []
