"""Issue 13, the worker side: connections and bodies under hostile or unlucky clients.

Every test runs real pymaster processes over loopback: aborted uploads, bodies the app never
reads, Upgrade requests, recycling and reloads under keep-alive load, a worker at its fd
limit, silent connections and slowloris clients.
"""

from __future__ import annotations

import http.client
import os
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager

import psutil
import pytest

from tests.pm import Pymaster, free_port, wait_port

APP = "tests/apps/conn_app.py"
GIB2 = 2147483648


@contextmanager
def server(tmp_path, *args, processes=1, preexec_fn=None):
    hport, uport = free_port(), free_port()
    argv = ["--http-socket", f"127.0.0.1:{hport}", "-s", f"127.0.0.1:{uport}",
            "--wsgi-file", APP, "-M", "-p", str(processes), *args]
    with Pymaster(argv, tmp_path, preexec_fn=preexec_fn) as pm:
        wait_port(hport)
        wait_port(uport)
        pm.wait_workers(processes)
        pm.hp, pm.up = hport, uport
        yield pm


def get(port, path="/hello", timeout=5.0, method="GET", body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read(), dict(resp.getheaders())
    finally:
        conn.close()


def read_until_eof(sock, timeout=5.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return data
        if not chunk:
            return data
        data += chunk


def deleted_temp_files(pid: int) -> list[str]:
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.endswith("(deleted)") and target.startswith(tempfile.gettempdir()):
            found.append(target)
    return found


# -- 1. aborted uploads -------------------------------------------------------------------
@pytest.mark.parametrize("extra", [[], ["--post-buffering", "4096"]], ids=["stream", "buffered"])
def test_aborted_uploads_leave_no_open_temp_files(tmp_path, extra):
    with server(tmp_path, "--limit-post", "0", *extra) as pm:
        (worker,) = pm.workers()
        before = deleted_temp_files(worker)
        chunk = b"x" * 65536
        for _ in range(6):
            with socket.create_connection(("127.0.0.1", pm.hp), timeout=5) as s:
                s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % GIB2)
                for _ in range(48):  # 3 MiB, then the client goes away
                    s.sendall(chunk)
            time.sleep(0.2)
        status, body, _ = get(pm.hp, "/hello")  # the worker has moved on
        assert status == 200
        assert deleted_temp_files(worker) == before == []
        assert pm.workers() == [worker]


# -- 3. bodies read on demand -------------------------------------------------------------
def test_app_that_never_reads_answers_at_once_and_the_connection_closes(tmp_path):
    with server(tmp_path, "--limit-post", "0") as pm:
        with socket.create_connection(("127.0.0.1", pm.hp), timeout=5) as s:
            s.sendall(b"POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\nab" % GIB2)
            t0 = time.monotonic()
            s.settimeout(3)
            reply = s.recv(65536)
            assert reply.startswith(b"HTTP/1.1 200 OK") and time.monotonic() - t0 < 2
            assert b"Connection: close\r\n" in reply
            s.sendall(b"c")  # a slow uploader: the worker is not waiting for it
            status, _, _ = get(pm.hp, "/hello", timeout=3)
            assert status == 200


def test_limit_post_default_refuses_a_2gib_body_at_once(tmp_path):
    with server(tmp_path) as pm:
        with socket.create_connection(("127.0.0.1", pm.hp), timeout=5) as s:
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % GIB2)
            s.settimeout(3)
            assert s.recv(65536).startswith(b"HTTP/1.1 413 ")
        status, _, _ = get(pm.hp, "/echo", method="POST", body=b"x" * 100000)
        assert status == 200


def test_unread_small_body_is_drained_and_keepalive_goes_on(tmp_path):
    with server(tmp_path) as pm:
        conn = http.client.HTTPConnection("127.0.0.1", pm.hp, timeout=5)
        pids = set()
        for _ in range(3):
            conn.request("POST", "/hello", body=b"y" * 200000)
            resp = conn.getresponse()
            assert resp.status == 200 and resp.getheader("Connection") != "close"
            pids.add(resp.read())
        conn.close()
        assert len(pids) == 1


def test_chunked_bodies_stream_and_small_ones_get_content_length(tmp_path):
    with server(tmp_path) as pm:
        big = [bytes([65 + i % 26]) * 10000 for i in range(30)]  # 300 kB, chunked by http.client
        status, body, headers = get(pm.hp, "/stream", method="POST", body=iter(big))
        assert status == 200 and body == b"".join(big) and headers["X-Content-Length"] == "-"
        status, body, headers = get(pm.hp, "/stream", method="POST", body=iter([b"ab", b"cd"]))
        assert status == 200 and body == b"abcd" and headers["X-Content-Length"] == "4"
        status, body, _ = get(pm.hp, "/stream", method="POST", body=b"z" * 70000)
        assert status == 200 and body == b"z" * 70000


@pytest.mark.parametrize("buffering", [False, True])
def test_post_buffering_calls_the_app_after_the_body_as_uwsgi(tmp_path, buffering):
    extra = ["--post-buffering", "4096"] if buffering else []
    with server(tmp_path, *extra) as pm:
        with socket.create_connection(("127.0.0.1", pm.hp), timeout=5) as s:
            s.sendall(b"POST /when HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
            time.sleep(0.6)
            second = time.time()
            s.sendall(b"world")
            reply = read_until_eof_or_response(s)
        called = float(re.search(rb"X-Called: ([\d.]+)", reply).group(1))
        assert reply.endswith(b"helloworld")
        assert (called >= second) == buffering


def read_until_eof_or_response(s) -> bytes:
    s.settimeout(5)
    data = b""
    while not data.endswith(b"world"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


# -- 9. Upgrade -----------------------------------------------------------------------------
def test_upgrade_request_gets_exactly_one_response(tmp_path):
    with server(tmp_path) as pm:
        with socket.create_connection(("127.0.0.1", pm.hp), timeout=5) as s:
            s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\n\r\n\x81\x05hello")
            data = read_until_eof(s)
        assert data.startswith(b"HTTP/1.1 200 OK") and data.count(b"HTTP/1.1 ") == 1
        assert b"Connection: close" in data


# -- 8. keep-alive across recycling and reloads -----------------------------------------------
def wrk(port, seconds=3, connections=16, path="/hello"):
    proc = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
                           f"http://127.0.0.1:{port}{path}"],
                          capture_output=True, text=True, timeout=seconds + 30)
    out = proc.stdout
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return total, (errors.group(1) if errors else None), non2xx, out


needs_wrk = pytest.mark.skipif(not shutil.which("wrk"), reason="needs wrk")


@needs_wrk
def test_recycling_under_keepalive_load_loses_nothing(tmp_path):
    with server(tmp_path, "--max-requests", "20", "--min-worker-lifetime", "0", processes=2) as pm:
        total, errors, non2xx, out = wrk(pm.hp)
        assert errors is None and non2xx is None, out
        assert total > 200, out
        assert len(re.findall(r"The work of process \d+ is done", pm.log())) >= 5


@needs_wrk
def test_reloads_under_keepalive_load_lose_nothing(tmp_path):
    with server(tmp_path, processes=2) as pm:
        def hups():
            for _ in range(3):
                time.sleep(0.8)
                pm.signal(signal.SIGHUP)
        t = threading.Thread(target=hups)
        t.start()
        total, errors, non2xx, out = wrk(pm.hp, seconds=4)
        t.join()
        assert errors is None and non2xx is None, out
        assert total > 100, out


# -- 4. a worker at its fd limit ------------------------------------------------------------
def _nofile(n):
    def set_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    return set_limit


def hold_keepalive_clients(port, n):
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        socks.append(s)
    for s in socks:  # each got its answer (or was closed to make room): now idle
        try:
            s.recv(65536)
        except OSError:
            pass
    return socks


@pytest.mark.parametrize("cap", [None, "1000"], ids=["default-cap", "cap-above-fd-limit"])
def test_worker_at_its_fd_limit_stays_calm_and_serves(tmp_path, cap):
    extra = ["--http-keepalive", "30"] + (["--max-idle-connections", cap] if cap else [])
    with server(tmp_path, *extra, preexec_fn=_nofile(64)) as pm:
        (worker,) = pm.workers()
        proc = psutil.Process(worker)
        socks = hold_keepalive_clients(pm.hp, 120)
        try:
            cpu0 = sum(proc.cpu_times()[:2])
            time.sleep(2.0)
            cpu = sum(proc.cpu_times()[:2]) - cpu0
            for _ in range(5):  # service resumes for new clients at once
                status, _, _ = get(pm.hp, "/hello", timeout=3)
                assert status == 200
        finally:
            for s in socks:
                s.close()
        assert cpu < 0.5, f"worker used {cpu:.2f} s of CPU in 2 s"
        lines = len(re.findall(r"Too many open files", pm.log()))
        assert lines <= 3, f"{lines} accept() error lines"
        assert pm.workers() == [worker]


# -- 2. silent connections and slowloris ----------------------------------------------------
@pytest.mark.parametrize("target", ["http", "uwsgi"])
def test_silent_flood_does_not_starve_real_requests(tmp_path, target):
    with server(tmp_path, processes=2) as pm:
        port = pm.hp if target == "http" else pm.up
        silent = []
        try:
            for _ in range(300):
                silent.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            time.sleep(0.3)
            t0 = time.monotonic()
            for _ in range(10):
                if target == "http":
                    status, _, _ = get(pm.hp, "/hello", timeout=3)
                    assert status == 200
                else:
                    from tests.client import uwsgi_get
                    assert uwsgi_get(pm.up, "/hello").startswith(b"HTTP/1.1 200 OK")
            assert time.monotonic() - t0 < 3
        finally:
            for s in silent:
                s.close()


def test_slowloris_clients_do_not_stop_service(tmp_path):
    with server(tmp_path, "--header-timeout", "3", processes=2) as pm:
        stop = threading.Event()
        closed_by_server = []

        def slow():
            with socket.create_connection(("127.0.0.1", pm.hp), timeout=10) as s:
                head = b"GET /hello HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 100
                for byte in head:
                    if stop.is_set():
                        return
                    if select.select([s], [], [], 0)[0]:  # the server answered: stop sending
                        break
                    try:
                        s.sendall(bytes([byte]))
                    except OSError:
                        break
                    time.sleep(0.1)
                closed_by_server.append(read_until_eof(s, 5))

        clients = [threading.Thread(target=slow) for _ in range(2)]
        for c in clients:
            c.start()
        try:
            time.sleep(0.5)
            t0 = time.monotonic()
            for _ in range(10):
                status, _, _ = get(pm.hp, "/hello", timeout=3)
                assert status == 200
            assert time.monotonic() - t0 < 2
            for c in clients:  # the head timeout ends them with a 408
                c.join(10)
            assert len(closed_by_server) == 2
            assert all(r.startswith(b"HTTP/1.1 408 ") for r in closed_by_server)
        finally:
            stop.set()
