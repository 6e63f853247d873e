"""balloonctl serve over the real guest: the service holds its QMP socket, the API and the
CLI go through it, /metrics shows the real balloon."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .qemu import MiB, QemuVM, poll_until
from .test_real_cli import VM, balloonctl_path

pytestmark = pytest.mark.realvm


def test_serve_drives_the_real_balloon(real_vm: QemuVM, tmp_path: Path) -> None:
    sock = tmp_path / "run" / "serve.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BALLOONCTL_")}
    env.update(BALLOONCTL_STATE=str(tmp_path / "state.json"),
               BALLOONCTL_JOURNAL=str(tmp_path / "journal.jsonl"),
               BALLOONCTL_SERVE_SOCKET=str(sock), XDG_CONFIG_HOME=str(tmp_path / "config"))
    proc = subprocess.Popen(
        [balloonctl_path(), "--qmp", f"{VM}={real_vm.qmp_path}", "--qga", str(real_vm.qga_path),
         "serve", "--interval", "0.5s"], env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        poll_until(lambda: sock.is_socket() or proc.poll() is not None, timeout=30,
                   what="the service's socket")
        assert proc.poll() is None, proc.communicate()
        client = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)),
                              base_url="http://serve", timeout=30)
        [vm] = client.get("/v1/vms").json()
        assert vm["name"] == VM and vm["reachable"] and vm["guest_ram"] == real_vm.ram
        assert client.post(f"/v1/vms/{VM}/stats", json={"interval": 1}).status_code == 200
        reply = client.post(f"/v1/vms/{VM}/target", json={"size": "768M"})
        assert reply.json() == {"name": VM, "target": 768 * MiB}

        def converged() -> bool:
            state = client.get(f"/v1/vms/{VM}").json()
            return bool(state["actual"] == 768 * MiB)

        poll_until(converged, timeout=60, what="the real balloon to reach 768 MiB")
        # the CLI (no --qmp: it would be told the socket is busy) goes through the service
        status = subprocess.run([balloonctl_path(), "status", "--json"], env=env,
                                capture_output=True, text=True, timeout=60, check=False)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)[0]["target"] == 768 * MiB
        families = {f.name: f for f in text_string_to_metric_families(
            client.get("/metrics").text)}
        [actual] = families["balloonctl_vm_actual_bytes"].samples
        assert actual.value == 768 * MiB

        def reported() -> bool:
            fams = {f.name: f for f in text_string_to_metric_families(
                client.get("/metrics").text)}
            return bool(fams.get("balloonctl_vm_free_bytes", None) and
                        fams["balloonctl_vm_free_bytes"].samples)

        poll_until(reported, timeout=30, what="the guest's stats in /metrics")
        journal = [json.loads(line) for line in
                   (tmp_path / "journal.jsonl").read_text().splitlines()]
        assert [(e["vm"], e["target"]) for e in journal] == [(VM, 768 * MiB)]
        client.post(f"/v1/vms/{VM}/stats", json={"interval": 0})
        client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert not sock.exists()
