"""``balloonctl serve`` as a real process over a fake fleet: on its unix socket and on
loopback TCP, with the CLI going through it, the token, and a clean stop."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_cli_process import BALLOONCTL, read_lines

from balloonctl.cli.exitcodes import ExitCode
from balloonctl.fake import FakeFleet, run_in_thread
from balloonctl.units import GiB

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def fleet(fake_dir: Path) -> Iterator[FakeFleet]:
    with run_in_thread(FakeFleet(3, fake_dir, tick=0.01, rate=4 * GiB, ram=2 * GiB,
                                 host_mem=8 * GiB)) as f:
        yield f


@pytest.fixture
def env(fake_dir: Path, tmp_path: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("_BALLOONCTL")}
    e.update({"BALLOONCTL_DIR": str(fake_dir), "BALLOONCTL_STATE": str(tmp_path / "state"),
              "BALLOONCTL_CONFIG": str(tmp_path / "absent.toml"), "BALLOONCTL_WELLKNOWN": "",
              "BALLOONCTL_SERVE_SOCKET": str(tmp_path / "run" / "serve.sock"),
              "BALLOONCTL_JOURNAL": str(tmp_path / "journal.jsonl")})
    e.pop("BALLOONCTL_TOKEN", None)
    return e


def wait_for_socket(path: Path, proc: subprocess.Popen[str], within: float = 20.0) -> None:
    """Until the service's socket appears (it is renamed into place once the service has
    started), or the process dies, or the deadline passes."""
    deadline = time.monotonic() + within
    while not path.is_socket():
        assert proc.poll() is None, f"serve exited: {proc.communicate()}"
        assert time.monotonic() < deadline, "the socket never appeared"
        time.sleep(0.02)


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    return proc.returncode, err


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BALLOONCTL, *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.fixture
def served(fleet: FakeFleet, env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    sock = Path(env["BALLOONCTL_SERVE_SOCKET"])
    proc = subprocess.Popen([BALLOONCTL, "serve", "--interval", "0.2s"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_socket(sock, proc)
        yield proc, sock
    finally:
        if proc.poll() is None:
            stop(proc)


def test_unix_socket_is_private_and_the_cli_goes_through_it(
    served: tuple[subprocess.Popen[str], Path], env: dict[str, str], fleet: FakeFleet
) -> None:
    proc, sock = served
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    # the service holds every QMP socket: a CLI that talked QMP itself would get "busy"
    status = cli(env, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert [vm["name"] for vm in json.loads(status.stdout)] == ["vm1", "vm2", "vm3"]
    done = cli(env, "set", "vm2", "1.5G", "--wait", "--timeout", "20s")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("vm2: reached 1.5 GiB (target 1.5 GiB)")
    journal = [json.loads(line) for line in
               Path(env["BALLOONCTL_JOURNAL"]).read_text().splitlines()]
    assert [(e["vm"], e["target"]) for e in journal] == [("vm2", 1536 * 2**20)]
    # the same error text and exit code as the CLI on its own
    refused = cli(env, "set", "vm1", "3G")
    assert refused.returncode == ExitCode.UNSAFE_TARGET
    assert refused.stderr == "balloonctl: error: vm1: target 3 GiB is above guest RAM (2 GiB)\n"
    unknown = cli(env, "status", "ghost")
    assert unknown.returncode == ExitCode.USAGE and "ghost" in unknown.stderr
    hint = cli(env, "hint", "vm3", "on")
    assert hint.returncode == 0 and hint.stdout.startswith("vm3: hint on (agent mode")
    # a second service on the same socket is refused, the first one keeps it
    second = cli(env, "serve")
    assert second.returncode == ExitCode.USAGE and "already" not in second.stderr
    assert "another balloonctl serve is listening" in second.stderr
    code, err = stop(proc)
    assert code == 0 and "balloonctl serve stopped" in err
    assert not sock.exists()


def test_loopback_tcp_needs_the_token(fleet: FakeFleet, env: dict[str, str],
                                      tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    proc = subprocess.Popen([BALLOONCTL, "serve", "--listen", "127.0.0.1:0", "--token-file",
                             str(token_file), "--auto"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        [url] = read_lines(proc.stdout, 1)
        assert url.startswith("http://127.0.0.1:")
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        bare = httpx.get(f"{url}/v1/vms", timeout=10)
        assert (bare.status_code, bare.json()["code"]) == (401, "unauthorized")
        refused = httpx.post(f"{url}/v1/vms/vm1/target", json={"size": "1G"},
                             headers={"authorization": "Bearer nope"}, timeout=10)
        assert refused.status_code == 401
        assert fleet["vm1"].guest.balloon_target == 0  # nothing changed
        ok = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {token}"},
                       timeout=10)
        assert ok.status_code == 200 and "balloonctl_vm_actual_bytes" in ok.text
        assert "balloonctl_auto_enabled 1.0" in ok.text  # --auto: on from the start
        # auto's switch needs the token like everything else
        for bearer in ({}, {"authorization": "Bearer nope"}):
            off = httpx.post(f"{url}/v1/auto", json={"enabled": False}, headers=bearer,
                             timeout=10)
            assert (off.status_code, off.json()["code"]) == (401, "unauthorized")
        mine = {"authorization": f"Bearer {token}"}
        assert httpx.get(f"{url}/v1/auto", headers=mine, timeout=10).json()["enabled"] is True
        off = httpx.post(f"{url}/v1/auto", json={"enabled": False}, headers=mine, timeout=10)
        assert (off.status_code, off.json()["enabled"]) == (200, False)
        remote = {**env, "BALLOONCTL_TOKEN": token}
        status = cli(remote, "--host", url, "status", "--json", "vm1")
        assert status.returncode == 0, status.stderr
        assert [vm["name"] for vm in json.loads(status.stdout)] == ["vm1"]
        wrong = cli({**env, "BALLOONCTL_TOKEN": "wrong"}, "--host", url, "set", "vm1", "1G")
        assert wrong.returncode == ExitCode.USAGE and "bearer token" in wrong.stderr
        rotated = cli(env, "token", "rotate", "--token-file", str(token_file))
        new = rotated.stdout.strip()
        assert rotated.returncode == 0 and new and new != token
        assert cli(remote, "--host", url, "status").returncode == ExitCode.USAGE
        assert cli({**env, "BALLOONCTL_TOKEN": new}, "--host", url, "status").returncode == 0
    finally:
        stop(proc)


def test_no_auto_means_no_controller_and_the_config_can_turn_it_on(
        fleet: FakeFleet, env: dict[str, str], tmp_path: Path) -> None:
    sock = Path(env["BALLOONCTL_SERVE_SOCKET"])
    for flags, config, want in ((["--no-auto"], "", None), ([], "[policy]\nauto = true\n", True),
                                ([], "", False)):
        (tmp_path / "config.toml").write_text(config)
        proc = subprocess.Popen([BALLOONCTL, "serve", *flags], text=True,
                                env={**env, "BALLOONCTL_CONFIG": str(tmp_path / "config.toml")},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_for_socket(sock, proc)
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)),
                              base_url="http://balloonctl") as client:
                got = client.get("/v1/auto")
            if want is None:
                assert (got.status_code, got.json()["code"]) == (503, "unavailable")
            else:
                assert (got.status_code, got.json()["enabled"]) == (200, want)
        finally:
            code, err = stop(proc)
        shown = {None: "not available", True: "on", False: "off"}[want]
        assert code == 0 and f"(auto {shown})" in err


def test_a_remote_address_needs_the_explicit_flag(env: dict[str, str]) -> None:
    done = cli(env, "serve", "--listen", "0.0.0.0:0")
    assert done.returncode == ExitCode.USAGE
    assert "--allow-remote" in done.stderr
    bad = cli(env, "serve", "--listen", "nowhere")
    assert bad.returncode == ExitCode.USAGE and "HOST:PORT" in bad.stderr


def test_a_socket_left_by_a_dead_service_is_ignored(fleet: FakeFleet,
                                                    env: dict[str, str]) -> None:
    import socket

    sock = Path(env["BALLOONCTL_SERVE_SOCKET"])
    sock.parent.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(sock))  # bound, never listening: what a crashed service leaves
    status = cli(env, "status", "--json", "vm1")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)[0]["reachable"] is True  # it talked QMP itself
