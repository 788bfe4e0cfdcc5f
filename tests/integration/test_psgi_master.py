"""PSGI apps through the real master: `pymaster --plugins psgi -s ADDR --psgi app.psgi -M -p 2`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time

import psutil
import pytest

from tests.external import have, http_get, nginx, pid_in_page
from tests.integration.test_psgi_worker import SEED_APP, TEST_APP
from tests.pm import Pymaster, free_port, split_response, uwsgi_request, wait_port

pytestmark = pytest.mark.skipif(not shutil.which("plackup"), reason="plackup (libplack-perl) missing")


def vars_for(port, path="/"):
    path_info, _, query = path.partition("?")
    return {"REQUEST_METHOD": "GET", "PATH_INFO": path_info, "QUERY_STRING": query,
            "REQUEST_URI": path, "SERVER_PROTOCOL": "HTTP/1.1", "SERVER_NAME": "localhost",
            "SERVER_PORT": str(port)}


def get(port, path="/"):
    status, headers, body = split_response(uwsgi_request(port, vars_for(port, path), modifier1=5))
    return status, body.decode("utf-8", "replace")


@pytest.fixture
def test_app(tmp_path):
    path = tmp_path / "test.psgi"
    path.write_text(TEST_APP)
    return path


def wait_idle_pids(pm, n, exclude=(), timeout=15.0):
    """The pids of `n` workers once each runs the Perl image (titled `pymaster worker N`);
    the master's transient children (the preflight check) are not counted."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = []
        for pid in pm.workers():
            try:
                if pid not in exclude and "pymaster worker" in " ".join(psutil.Process(pid).cmdline()):
                    pids.append(pid)
            except psutil.Error:
                pass
        if len(pids) == n:
            return pids
        time.sleep(0.05)
    raise AssertionError(f"expected {n} Perl workers, have {pm.workers()}:\n{pm.log()}")


@pytest.mark.skipif(not SEED_APP.exists(), reason="seed app.psgi missing")
def test_seed_app_prefork_two_workers(tmp_path):
    port = free_port()
    with Pymaster(["--plugins", "psgi", "-s", f"127.0.0.1:{port}", "--psgi", SEED_APP, "-M",
                   "-p", "2"], tmp_path) as pm:
        wait_port(port)
        pids = wait_idle_pids(pm, 2)
        seen = set()
        deadline = time.monotonic() + 10
        while seen != set(pids) and time.monotonic() < deadline:
            status, body = get(port)
            assert status == "HTTP/1.1 200 OK", body
            seen.add(pid_in_page(body))
        assert seen == set(pids)
        titles = sorted(" ".join(psutil.Process(p).cmdline()) for p in pids)
        assert titles == ["pymaster worker 1", "pymaster worker 2"]


def test_http_socket_and_respawn(tmp_path, test_app):
    port = free_port()
    with Pymaster(["--http-socket", f"127.0.0.1:{port}", "--psgi", test_app, "-M", "-p", "1"],
                  tmp_path) as pm:
        wait_port(port)
        [pid] = wait_idle_pids(pm, 1)
        resp = http_get(port, "/hello")
        assert resp.status == 200 and resp.text == f"hello {pid}"
        os.kill(pid, signal.SIGKILL)
        [new] = wait_idle_pids(pm, 1, exclude=[pid])
        assert http_get(port, "/hello").text == f"hello {new}"


def test_max_requests_recycles_perl_worker(tmp_path, test_app):
    port = free_port()
    with Pymaster(["-s", f"127.0.0.1:{port}", "--psgi", test_app, "-M", "-p", "1",
                   "--max-requests", "2", "--min-worker-lifetime", "0"], tmp_path) as pm:
        wait_port(port)
        [pid] = wait_idle_pids(pm, 1)
        assert get(port, "/hello")[1] == f"hello {pid}"
        assert get(port, "/hello")[1] == f"hello {pid}"
        pm.wait_log(r"The work of process %d is done" % pid)
        [new] = wait_idle_pids(pm, 1, exclude=[pid])
        assert get(port, "/hello")[1] == f"hello {new}"


def test_graceful_reload_serves_new_workers(tmp_path, test_app):
    port = free_port()
    with Pymaster(["-s", f"127.0.0.1:{port}", "--psgi", test_app, "-M", "-p", "2"], tmp_path) as pm:
        wait_port(port)
        old = wait_idle_pids(pm, 2)
        pm.signal(signal.SIGHUP)
        new = wait_idle_pids(pm, 2, exclude=old, timeout=20)
        assert int(get(port, "/hello")[1].split()[1]) in new


def test_harakiri_kills_stuck_perl_worker(tmp_path, test_app):
    port = free_port()
    with Pymaster(["-s", f"127.0.0.1:{port}", "--psgi", test_app, "-M", "-p", "1",
                   "--harakiri", "1"], tmp_path) as pm:
        wait_port(port)
        [pid] = wait_idle_pids(pm, 1)
        start = time.monotonic()
        raw = uwsgi_request(port, vars_for(port, "/slow?t=8"), modifier1=5, timeout=15)
        assert raw == b"" and time.monotonic() - start < 6
        pm.wait_log(r"HARAKIRI")
        wait_idle_pids(pm, 1, exclude=[pid])


def test_stats_show_perl_worker_counters(tmp_path, test_app):
    port, stats = free_port(), free_port()
    with Pymaster(["-s", f"127.0.0.1:{port}", "--psgi", test_app, "-M", "-p", "1",
                   "--stats", f"127.0.0.1:{stats}"], tmp_path) as pm:
        wait_port(port)
        [pid] = wait_idle_pids(pm, 1)
        for _ in range(3):
            get(port, "/hello")
        get(port, "/die")
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", stats), timeout=5) as sock:
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        worker = json.loads(data)["workers"][0]
        assert worker["pid"] == pid and worker["requests"] == 4
        assert worker["exceptions"] == 1 and worker["tx"] > 0


def test_app_that_cannot_load_stops_the_master(tmp_path):
    app = tmp_path / "bad.psgi"
    app.write_text("use Text::NoSuchModule;\nsub { [200, [], ['x']] };\n")
    port = free_port()
    with Pymaster(["-s", f"127.0.0.1:{port}", "--psgi", app, "-M", "-p", "2", "--need-app"],
                  tmp_path) as pm:
        assert pm.wait(20) == 22
        assert "needs the Perl module Text::NoSuchModule" in pm.log()
        assert "libtext-nosuchmodule-perl" in pm.log()


@pytest.mark.skipif(not SEED_APP.exists() or not have("nginx"), reason="nginx or seed app missing")
def test_nginx_uwsgi_pass_to_psgi_workers(tmp_path):
    port = free_port()
    with Pymaster(["-s", f"127.0.0.1:{port}", "--psgi", SEED_APP, "-M", "-p", "2"], tmp_path) as pm, \
            nginx(f"127.0.0.1:{port}", "uwsgi_pass", {"uwsgi_modifier1": "5"}) as front:
        wait_port(port)
        pids = wait_idle_pids(pm, 2)
        for _ in range(6):
            resp = http_get(front.port, "/")
            assert resp.status == 200 and pid_in_page(resp.text) in pids


@pytest.mark.skipif(not SEED_APP.exists(), reason="seed app.psgi missing")
def test_seed_app_single_process_without_master(tmp_path):
    port = free_port()
    with Pymaster(["--plugins", "psgi", "-s", f"127.0.0.1:{port}", "--psgi", SEED_APP], tmp_path) as pm:
        wait_port(port, timeout=20)
        status, body = get(port)
        assert status.endswith("200 OK") and f"PID: {pm.pid}" in body
        assert pm.workers() == []


def test_psgi_reloads_and_recycling_under_load_fail_nothing(tmp_path, test_app):
    from tests.load import Load
    port = free_port()
    fifo = tmp_path / "fifo"
    with Pymaster(["-s", f"127.0.0.1:{port}", "--psgi", test_app, "-M", "-p", "2",
                   "--master-fifo", fifo, "--max-requests", "40", "--min-worker-lifetime", "0"],
                  tmp_path) as pm:
        wait_port(port)
        wait_idle_pids(pm, 2)
        with Load(port, threads=6, path="/hello") as load:
            load.wait_ok(100, timeout=20)
            pm.signal(signal.SIGHUP)
            pm.wait_log(r"gracefully \(RE\)spawned pymaster master process", timeout=20)
            load.wait_ok(100, timeout=20)
            fifo.write_bytes(b"c")                     # a Perl worker loads the app anew
            pm.wait_log(r"chain reloading complete", timeout=30)
            load.wait_ok(100, timeout=20)
        assert load.failures == [] and load.ok >= 300
        assert "killed successfully" in pm.log()       # max-requests recycled workers too
