"""``balloonctl serve``'s own options as a real process over a fake fleet: ``--socket``
(where it listens), ``--label`` (its name in health and the stream) and ``--rotate-token``
(a new token, printed, and nothing served)."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cliproc import BALLOONCTL, cli_env, run
from test_serve_process import wait_for_socket

from balloonctl.fake import FakeFleet, run_in_thread
from balloonctl.units import GiB

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def env(fake_dir: Path, tmp_path: Path) -> Iterator[dict[str, str]]:
    with run_in_thread(FakeFleet(2, fake_dir, tick=0.01, rate=4 * GiB, ram=GiB)):
        e = cli_env(fake_dir, tmp_path)
        e["BALLOONCTL_SERVE_SOCKET"] = str(tmp_path / "default" / "serve.sock")
        e["BALLOONCTL_JOURNAL"] = str(tmp_path / "journal.jsonl")
        yield e


def serve(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([BALLOONCTL, "serve", "--interval", "0.2s", *args], env=env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def stopped(proc: subprocess.Popen[str]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=20)
    return proc.returncode


def get(sock: Path, path: str) -> httpx.Response:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=10) as client:
        return client.get(f"http://serve{path}")


@pytest.mark.parametrize("label", ["hv-test-7", None])
def test_socket_and_label(env: dict[str, str], tmp_path: Path, label: str | None) -> None:
    """--socket PATH: the service listens there (0600), not at the default; --label NAME
    names the host in /v1/health and in every stream line (default: the host name)."""
    sock = tmp_path / "own" / "s.sock"
    proc = serve(env, "--socket", str(sock), *(["--label", label] if label else []))
    try:
        wait_for_socket(sock, proc)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert not Path(env["BALLOONCTL_SERVE_SOCKET"]).exists()
        want = label or socket.gethostname()
        health = get(sock, "/v1/health").json()
        assert (health["ok"], health["host"], health["vms"]) == (True, want, 2)
        transport = httpx.HTTPTransport(uds=str(sock))
        with httpx.Client(transport=transport, timeout=10) as client, \
                client.stream("GET", "http://serve/v1/stream") as stream:
            first = json.loads(next(stream.iter_lines()))
        assert (first["type"], first["host"]) == ("snapshot", want)
        assert sorted(vm["name"] for vm in first["vms"]) == ["vm1", "vm2"]
    finally:
        assert stopped(proc) == 0
    assert not sock.exists()  # removed on a clean stop


def test_rotate_token_prints_a_new_one_and_serves_nothing(env: dict[str, str],
                                                          tmp_path: Path) -> None:
    tokens = tmp_path / "tok" / "serve.token"
    first = run(env, "serve", "--rotate-token", "--token-file", str(tokens))
    assert first.returncode == 0, first.stderr
    token = first.stdout.strip()
    assert first.stdout == token + "\n" and len(token) >= 32
    assert tokens.read_text().strip() == token
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600
    again = run(env, "serve", "--rotate-token", "--token-file", str(tokens))
    assert again.returncode == 0 and again.stdout.strip() not in ("", token)
    assert tokens.read_text().strip() == again.stdout.strip()
    assert not Path(env["BALLOONCTL_SERVE_SOCKET"]).exists()  # it did not start serving
    assert "new token in" in again.stderr


def test_socket_and_listen_conflict(env: dict[str, str], tmp_path: Path) -> None:
    r = run(env, "serve", "--socket", str(tmp_path / "s.sock"), "--listen", "127.0.0.1:0")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "--listen and --socket conflict" in r.stderr
    assert not os.path.exists(tmp_path / "s.sock")
