"""What operators install, checked as they would: the systemd units pass `systemd-analyze
verify` and score under 4 in `systemd-analyze security`, their system-call filter lets a
real pymaster do what it does (traced with strace), `python -m pymaster.deploy` writes a unit
for this installation, and the wheel carries the units, the INI files and the metadata."""

from __future__ import annotations

import http.client
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import psutil
import pytest

from tests.client import LOOPBACK, free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "etc" / "systemd"
SHIPPED = ["asgi.ini", "fastrouter.ini", "psgi.ini", "pymaster-emperor.service", "pymaster@.service",
           "pymaster@.socket", "wsgi.ini"]

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (Debian: systemd)"
)


def analyze(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=60)


def exposure(unit: Path) -> float:
    res = analyze("security", "--offline=yes", str(unit))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout)
    assert match, res.stdout + res.stderr
    return float(match.group(1))


def deploy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pymaster.deploy", *args],
                          capture_output=True, text=True, timeout=60)


@needs_analyze
def test_shipped_units_verify_and_are_hardened():
    units = [UNITS / "pymaster@.service", UNITS / "pymaster@.socket",
             UNITS / "pymaster-emperor.service"]
    assert sorted(p.name for p in UNITS.iterdir()) == sorted(p.name for p in units)
    res = analyze("verify", *map(str, units))
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr
    assert exposure(UNITS / "pymaster@.service") < 4.0
    assert exposure(UNITS / "pymaster-emperor.service") < 4.0


@needs_analyze
def test_generated_unit_names_this_installation(tmp_path):
    res = deploy("unit", "-o", str(tmp_path), "--ini-dir", "/srv/ini/")
    assert res.returncode == 0, res.stderr
    text = (tmp_path / "pymaster@.service").read_text()
    execs = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    assert len(execs) == 1 and execs[0].endswith(" --ini /srv/ini/%i.ini")
    program = execs[0].removeprefix("ExecStart=").split()[0]
    assert Path(program).is_absolute() and Path(program).exists()
    assert Path(program).resolve() in (Path(sys.executable).resolve(),
                                       Path(sys.executable).with_name("pymaster").resolve())
    shipped = (UNITS / "pymaster@.service").read_text().splitlines()
    assert [x for x in text.splitlines() if not x.startswith("ExecStart=")] == \
        [x for x in shipped if not x.startswith("ExecStart=")]
    emperor = (tmp_path / "pymaster-emperor.service").read_text()
    assert f"ExecStart={execs[0].removeprefix('ExecStart=').split(' --ini')[0]} --emperor " \
        "/srv/ini/vassals" in emperor
    res = analyze("verify", *(str(tmp_path / n) for n in
                              ("pymaster@.service", "pymaster@.socket", "pymaster-emperor.service")))
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr
    assert exposure(tmp_path / "pymaster@.service") < 4.0


def test_deploy_lists_and_shows_the_shipped_files():
    res = deploy("list")
    assert res.returncode == 0 and res.stdout.split() == SHIPPED
    for name in SHIPPED:
        source = UNITS / name if name.startswith("pymaster") else ROOT / "etc" / name
        assert deploy("show", name).stdout == source.read_text()
    res = deploy("show", "nginx.conf")
    assert res.returncode == 2
    assert "no shipped file 'nginx.conf'; expected one of: asgi.ini, fastrouter.ini" in res.stderr


def syscall_groups() -> dict[str, set[str]]:
    out = analyze("syscall-filter").stdout
    groups: dict[str, set[str]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), set())
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.add(line.strip())
    return groups


def expand(groups: dict[str, set[str]], names: list[str]) -> set[str]:
    out: set[str] = set()
    for name in names:
        out |= expand(groups, sorted(groups[name])) if name.startswith("@") else {name}
    return out


@needs_analyze
@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")
def test_the_units_syscall_filter_lets_pymaster_work(tmp_path):
    """Every system call a master, its workers and the stats server make (start, requests,
    /metrics, a graceful stop) is one the unit's SystemCallFilter= allows."""
    allow: list[str] = []
    deny: list[str] = []
    for line in (UNITS / "pymaster@.service").read_text().splitlines():
        if line.startswith("SystemCallFilter="):
            value = line.removeprefix("SystemCallFilter=")
            (deny if value.startswith("~") else allow).extend(value.lstrip("~").split())
    groups = syscall_groups()
    allowed = expand(groups, allow) - expand(groups, deny)
    (tmp_path / "app.py").write_text(
        "def application(env, start):\n"
        "    start('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'ok']\n")
    hport = free_port()
    trace = tmp_path / "strace.txt"
    cmd = ["strace", "-f", "-qq", "-c", "-o", str(trace), sys.executable, "-m", "pymaster",
           "--http-socket", f"127.0.0.1:{hport}", "--wsgi-file", str(tmp_path / "app.py"),
           "-M", "-p", "2", "--stats", f"{tmp_path}/stats.sock", "--stats-http",
           "--master-fifo", str(tmp_path / "fifo"), "--max-requests", "3"]
    log = open(tmp_path / "pm.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(hport, 60, proc)

        for _ in range(8):  # past --max-requests: a worker is recycled and respawned
            conn = http.client.HTTPConnection(LOOPBACK, hport, timeout=30)
            conn.request("GET", "/")
            assert conn.getresponse().read() == b"ok"
            conn.close()

        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(30)
            s.connect(str(tmp_path / "stats.sock"))
            s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        assert b"pymaster_worker_requests_total" in data
        time.sleep(0.5)
        # strace itself is our child: signal the traced master, found by its argv
        master = next(p for p in psutil.Process(proc.pid).children()
                      if "pymaster" in " ".join(p.cmdline()))
        master.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, (tmp_path / "pm.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
    assert "goodbye to pymaster" in (tmp_path / "pm.log").read_text()
    used = set()
    for line in trace.read_text().splitlines():
        parts = line.split()
        if parts and parts[0][0].isdigit() and parts[-1] != "total":
            used.add(parts[-1])
    assert {"accept4", "memfd_create", "epoll_wait", "clone"} & used
    assert not used - allowed, f"system calls the unit forbids: {sorted(used - allowed)}"


def test_wheel_carries_units_configs_and_metadata(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v",
         "--no-deps", str(ROOT), "-w", str(tmp_path)],
        capture_output=True, text=True, timeout=600)
    if res.returncode != 0 and "No matching distribution found for setuptools" in res.stdout + res.stderr:
        pytest.skip("the build backend (setuptools from PyPI) cannot be fetched here")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    output = res.stdout + res.stderr
    assert "SetuptoolsDeprecationWarning" not in output, output[-4000:]
    (wheel,) = tmp_path.glob("pymaster-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for name in SHIPPED:
            assert f"pymaster/deploy/files/{name}" in names
            source = UNITS / name if name.startswith("pymaster") else ROOT / "etc" / name
            assert zf.read(f"pymaster/deploy/files/{name}").decode() == source.read_text()
        assert "pymaster/workers/psgi/perl/Plack/Handler/Pymaster.pm" in names
        dist = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        assert f"{dist}/licenses/LICENSE" in names
        meta = zf.read(f"{dist}/METADATA").decode()
    assert "License-Expression: MIT" in meta and "License-File: LICENSE" in meta
    assert "Classifier: Topic :: Internet :: WWW/HTTP :: WSGI :: Server" in meta
    assert "Classifier: License ::" not in meta  # SPDX expression only (PEP 639)
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    # PyPI shows the long description: no link in it may be relative (PyPI cannot follow them)
    assert "Description-Content-Type: text/markdown" in meta and "--emperor DIR" in meta
    links = re.findall(r"\]\(([^)]+)\)", meta)
    assert all(link.startswith(("https://", "http://", "#")) for link in links), links
