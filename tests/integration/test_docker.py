"""The Dockerfile: its instance configuration serves the demo (run here with the image's
paths mapped onto the checkout), and, where a Docker daemon runs and can pull the Debian
base image, the image is built and run: it answers as a non-root user and `docker stop`
(SIGTERM) is a graceful shutdown with exit 0."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.client import LOOPBACK, free_port, http_get, pid_in_page, wait_for_port

ROOT = Path(__file__).resolve().parents[2]


def test_the_images_ini_serves_the_demo(tmp_path):
    """docker/app.ini with /srv/app mapped onto examples/ and its ports onto free ones."""
    hport, sport = free_port(), free_port()
    ini = (ROOT / "docker" / "app.ini").read_text()
    ini = ini.replace("/srv/app/static", str(ROOT / "examples" / "static"))
    ini = ini.replace("/srv/app/app.wsgi", str(ROOT / "examples" / "app.wsgi"))
    ini = ini.replace(":8000", f"127.0.0.1:{hport}").replace(":9191", f"127.0.0.1:{sport}")
    assert "/srv/app" not in ini.split("[uwsgi]", 1)[1]
    (tmp_path / "app.ini").write_text(ini)
    log = open(tmp_path / "pm.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "pymaster", "--ini", str(tmp_path / "app.ini")],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(hport, 20, proc)
        wait_for_port(sport, 20, proc)
        page = http_get(hport, "/")
        assert page.status == 200 and pid_in_page(page.text)
        assert http_get(hport, "/static/python.png").body.startswith(b"\x89PNG")
        assert b"pymaster_worker_requests_total" in http_get(sport, "/metrics").body
        proc.terminate()  # what `docker stop` sends
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
    assert "goodbye to pymaster" in (tmp_path / "pm.log").read_text()


def docker_ready() -> str | None:
    """None when a Docker daemon answers, else why the image test cannot run."""
    if shutil.which("docker") is None:
        return "docker is not installed"
    res = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                         capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        return f"no Docker daemon: {(res.stderr.strip().splitlines() or ['?'])[-1]}"
    return None


def test_image_builds_runs_as_non_root_and_stops_gracefully():
    why = docker_ready()
    if why:
        pytest.skip(why)
    base = "debian:bookworm-slim"
    pull = subprocess.run(["docker", "pull", base], capture_output=True, text=True, timeout=300)
    if pull.returncode != 0:
        pytest.skip(f"cannot pull the base image {base} (no registry reachable): "
                    f"{pull.stderr.strip()[-200:]}")
    tag = f"pymaster-test-{uuid.uuid4().hex[:10]}"
    name = tag
    build = subprocess.run(["docker", "build", "-t", tag,
                            str(ROOT)], capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    hport, sport = free_port(), free_port()
    try:
        subprocess.run(["docker", "run", "-d", "--name", name, "-p", f"{LOOPBACK}:{hport}:8000",
                        "-p", f"{LOOPBACK}:{sport}:9191", tag], check=True, capture_output=True,
                       timeout=60)
        deadline = time.monotonic() + 60
        page = None
        while time.monotonic() < deadline:
            try:
                page = http_get(hport, "/", timeout=5)
                if page.status == 200:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        assert page is not None and page.status == 200, subprocess.run(
            ["docker", "logs", name], capture_output=True, text=True).stdout
        pid = pid_in_page(page.text)
        with socket.create_connection((LOOPBACK, sport), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        doc = json.loads(data.partition(b"\r\n\r\n")[2])
        assert doc["pid"] == 1 and doc["uid"] == 10001 and doc["gid"] == 10001
        assert pid in [w["pid"] for w in doc["workers"]]
        subprocess.run(["docker", "stop", "-t", "30", name], check=True, capture_output=True,
                       timeout=60)
        state = subprocess.run(["docker", "inspect", "-f", "{{.State.ExitCode}}", name],
                               capture_output=True, text=True, timeout=30).stdout.strip()
        out = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
        logs = out.stdout + out.stderr  # the container's stderr comes back on stderr
        assert state == "0", logs
        assert "goodbye to pymaster" in logs
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=60)
